"""Qwen2-VL and Qwen2.5-VL adapters over transformers' ``Qwen2VLForConditionalGeneration`` and
``Qwen2_5_VLForConditionalGeneration`` (one image per prompt, local HF directories).

Layout. The processor resizes the whole image (``smart_resize``: no crop, no padding) to
``(gh * p, gw * p)`` pixels with ``gh, gw`` multiples of the merge size ``m`` (2), cuts it into
``p x p`` patches (14 px, each repeated ``temporal_patch_size`` times as a two-frame clip) and flattens
them into ``pixel_values [L, C*T*p*p]`` with ``image_grid_thw = (1, gh, gw)``. Every ``m x m`` window
of patches is merged into one image token, so the layout is one grid of ``(gh/m, gw/m)`` cells
covering the original image evenly; it varies with each image's size and aspect ratio. The
processor orders the patch rows window by window (merged cell row-major, then the ``m x m`` patches
inside it), so patch row ``r`` feeds cell ``r // m**2``. A generation keeps its rows as
``pixel_values [1, L, D]`` and its ``image_grid_thw`` in ``image_inputs``; a forward of ``B`` copies
flattens them back to ``[B*L, D]`` with the grid repeated ``B`` times (the tower attends within
each copy).

Positions. Both use M-RoPE: image tokens get (t, h, w) positions, text after the image continues
from the largest. The re-forwards compute them with the model's own ``get_rope_index`` over the
unpadded prompt + answer (generation computes them over the left-padded batch, ignoring padding),
so teacher-forced logits and hidden states equal those of generation (tested).

Hook points: the merger's output is the image features (``image_features_as_leaf``); the patch
embedding's ``[L, D]`` output gives Grad-CAM one feature vector per patch; image token ``i`` is made
of the ``m**2`` tower tokens merged into it (``vision_token_positions``; Qwen2.5-VL's tower runs them
window by window, reordered). The towers' attention modules return no attention weights in
transformers, so relevance cannot be followed into them (``vision_layers_read`` refuses).

Processor: always built image-only (image processor + tokenizer + chat template, no video
processor), since transformers' video processors need torchvision. Answers are greedy: the
sampling settings and repetition penalty of the checkpoint's ``generation_config.json`` are not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from xbench.api import Generation
from xbench.errors import ModelCapabilityError, ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.image_layout import ImageLayout, single_grid
from xbench.models.hf import HFAdapter, read_chat_template


def image_only_processor(processor_class: type, path: Path):
    """``processor_class`` (a Qwen2-VL-style processor) over the directory's image processor,
    tokenizer and chat template, without a video processor (those need torchvision)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    class ImageOnly(processor_class):  # its attributes are read from this signature
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template)  # fmt: skip

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{processor_class.__name__}ImagesOnly"
    image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return ImageOnly(image_processor=image_processor, tokenizer=tokenizer, chat_template=read_chat_template(path))


class Qwen2VLAdapter(HFAdapter):
    """Qwen2-VL checkpoints (see the module docstring)."""

    family = "qwen2_vl"
    description = "Qwen2VLForConditionalGeneration (merged 2x2 patches, per-image grids, M-RoPE), local HF directories"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    processor_class = "Qwen2VLProcessor"
    pixel_channel_dim = None  # channels are mixed into each patch row: see fill_value

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        from transformers import GenerationConfig

        gc = model.generation_config  # greedy decoding only: keep the checkpoint's special tokens
        model.generation_config = GenerationConfig(
            bos_token_id=gc.bos_token_id, eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id
        )
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        vc = model.config.vision_config
        self.merge = int(vc.spatial_merge_size)
        self.patch = int(vc.patch_size)
        self.channels = int(vc.in_channels)
        ip = processor.image_processor
        if (int(ip.merge_size), int(ip.patch_size), int(ip.temporal_patch_size)) != (
            self.merge, self.patch, int(vc.temporal_patch_size)
        ):
            raise ModelLoadError(
                f"model {self.name!r}: its processor (merge {ip.merge_size}, patch {ip.patch_size}, temporal "
                f"{ip.temporal_patch_size}) does not match its vision config (merge {self.merge}, patch {self.patch}, "
                f"temporal {vc.temporal_patch_size})"
            )

    @classmethod
    def load_processor(cls, path: Path):
        import transformers

        return image_only_processor(getattr(transformers, cls.processor_class), path)

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.model.visual

    # ------------------------------------------------------------------ layout
    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        """One grid of merged cells laid evenly over the whole original image (the resize keeps all of it)."""
        _, gh, gw = (int(v) for v in inputs["image_grid_thw"][i])
        size = (image.height, image.width)
        return single_grid((gh // self.merge, gw // self.merge), (0.0, 0.0, float(size[0]), float(size[1])), size)

    def sample_pixels(self, inputs, i: int) -> torch.Tensor:
        """Row ``i``'s patch rows ``[1, L_i, D]`` (the processor concatenates every image's rows)."""
        counts = inputs["image_grid_thw"].prod(dim=-1).tolist()
        start = int(sum(counts[:i]))
        return inputs["pixel_values"][start : start + int(counts[i])][None]

    def image_inputs(self, inputs, i: int) -> Mapping[str, Any]:
        return {"image_grid_thw": inputs["image_grid_thw"][i : i + 1]}

    def grid_thw(self, generation: Generation) -> torch.Tensor:
        thw = generation.image_inputs.get("image_grid_thw")
        if thw is None:
            raise ModelCapabilityError(f"model {self.name!r}: generation {generation.sample_id!r} has no image_grid_thw")
        return thw.to(self.device)

    def forward_inputs(self, generation: Generation, pixel_values: torch.Tensor) -> dict[str, Any]:
        """``B`` copies: rows flattened to ``[B*L, D]``, grid repeated, M-RoPE positions of the
        unpadded prompt + answer (the same for every copy)."""
        B = pixel_values.shape[0]
        ids = self.input_ids(generation)
        types = (ids == self.image_token_id).int()
        thw = self.grid_thw(generation)
        positions, _ = self.model.model.get_rope_index(ids, types, image_grid_thw=thw)
        return {
            "pixel_values": pixel_values.reshape(-1, pixel_values.shape[-1]),
            "image_grid_thw": thw.repeat(B, 1),
            "mm_token_type_ids": types.expand(B, -1),
            "position_ids": positions.expand(-1, B, -1),
        }

    def n_patches(self, generation: Generation) -> int:
        return int(generation.pixel_values.shape[1])

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        """``[L]``: patch row ``r`` feeds merged cell ``r // m**2`` (the processor's window-major order)."""
        return torch.arange(self.n_patches(generation)) // (self.merge**2)

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, L, 1]``: every element of a patch row feeds that row's cell."""
        return self.patch_cells(generation).to(generation.pixel_values.device)[None, :, None]

    def pixel_channels(self, generation: Generation) -> torch.Tensor:
        """``[1, 1, C*T*p*p]``: each row is ``C x T x p x p``, channel-major."""
        width = generation.pixel_values.shape[-1] // self.channels
        return torch.arange(self.channels, device=generation.pixel_values.device).repeat_interleave(width)[None, None]

    def fill_value(self, generation: Generation, fill: str) -> torch.Tensor:
        """``"mean"``: per colour channel (each row is ``C x T x p x p``), over every patch row."""
        if fill != "mean":
            return super().fill_value(generation, fill)
        pv = generation.pixel_values
        per_channel = pv.reshape(1, pv.shape[1], self.channels, -1).mean(dim=(1, 3), keepdim=True)  # [1, 1, C, 1]
        width = pv.shape[-1] // self.channels
        return per_channel.expand(1, 1, self.channels, width).reshape(1, 1, -1)

    # ------------------------------------------------------------------ hook points
    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The merger, whose output (the image tokens' features) enters the language model."""
        return self.visual.merger

    def vision_attentions(self, outputs) -> None:
        """None: what transformers records as the tower's "attentions" are its attention modules'
        outputs ``[L, D]``, not attention weights."""
        return None

    def vision_layers_read(self) -> int:
        raise ModelCapabilityError(
            f"model {self.name!r} ({self.family}): the vision tower's attention modules return no attention "
            "weights (transformers records only their outputs), so relevance cannot be followed into the tower"
        )

    def merged_order(self, generation: Generation) -> torch.Tensor:
        """``[N]``: the tower-sequence slot of each merged cell's group of ``m**2`` tokens (Qwen2-VL:
        the processor's order)."""
        return torch.arange(self.n_patches(generation) // self.merge**2)

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """Image token ``i`` is the ``m**2`` tower tokens merged into it."""
        unit = self.merge**2
        slots = self.merged_order(generation).tolist()
        return [[s * unit + k for k in range(unit)] for s in slots]

    def patch_features(self):
        """The patch embedding (a Conv3d over each flattened patch row): ``[B*L, D]`` -> ``[D, L]`` of copy 0."""

        def view(output: torch.Tensor, generation: Generation) -> torch.Tensor:
            return output.reshape(-1, self.n_patches(generation), output.shape[-1])[0].T

        return self.visual.patch_embed, view


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL checkpoints: Qwen2-VL's layout; its tower attends within windows of
    ``window_size`` pixels (full attention in ``fullatt_block_indexes``), running the merged groups
    window by window."""

    family = "qwen2_5_vl"
    description = "Qwen2_5_VLForConditionalGeneration (windowed tower, merged 2x2 patches, M-RoPE), local HF directories"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    processor_class = "Qwen2_5_VLProcessor"

    def merged_order(self, generation: Generation) -> torch.Tensor:
        """The tower reorders merged groups window by window: cell ``c`` sits at slot ``argsort(window_index)[c]``."""
        from transformers.vision_utils import get_vision_window_index

        vc = self.model.config.vision_config
        window_index, _ = get_vision_window_index(
            self.grid_thw(generation).cpu(), spatial_merge_size=self.merge, window_size=vc.window_size,
            patch_size=self.patch,
        )  # fmt: skip
        return torch.argsort(window_index)


@hookimpl
def xbench_register_model_families(registry):
    registry.register(Qwen2VLAdapter)
    registry.register(Qwen25VLAdapter)
