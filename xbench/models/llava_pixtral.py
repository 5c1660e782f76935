"""LLaVA with a Pixtral vision tower (mistral-community/pixtral-12b): ``model_type`` llava, a
``pixtral`` ``vision_config``. The plain ``llava`` family declines these checkpoints (its towers
read one fixed square); this family accepts exactly them.

Layout. The image processor resizes the original ``H x W`` image (never enlarging it) so that its
longest edge fits ``size["longest_edge"]``, each side rounded *up* to whole patches, without crop:
the processed ``h x w`` image (``image_sizes``) is the whole original image stretched, cut into the
``h/p x w/p`` patch grid, which therefore depends on the image's aspect ratio. Each patch is one
tower token and (``vision_feature_select_strategy`` full, no CLS, no spatial merge) one image token:
the prompt holds per grid row ``w/p`` ``[IMG]`` tokens and one ``[IMG_BREAK]``, the last break being
``[IMG_END]``. The image tokens (the cells) are the ``[IMG]`` tokens, row-major; the break and end
tokens are not image tokens. Cell ``(r, c)`` covers the box ``H/gh x W/gw`` of the original image.

Pixels. A batch is padded (bottom / right, zeros) to its largest processed image; the tower reads each
image only within its ``image_sizes``, so padding feeds no cell. ``Generation.pixel_values`` is the
sample's own unpadded ``[1, 3, h, w]`` and ``Generation.image_inputs["image_sizes"]`` its ``[1, 2]``
size; a re-forward of ``B`` copies runs the tower once per copy. Samples of different sizes generate in one batch
(the tower attends within each image: a block-diagonal mask over the concatenated patches).

Processor. transformers' ``PixtralProcessor`` module imports the torchvision image processor at import
time, so without torchvision it cannot be used at all. :class:`PixtralImageTextProcessor` does its
job from the directory's files (``PixtralImageProcessorPil`` through ``AutoImageProcessor``, the
tokenizer, ``processor_config.json``'s tokens and patch size, the chat template), images only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from xbench.api import Generation
from xbench.errors import ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.image_layout import ImageLayout, single_grid
from xbench.models import layout
from xbench.models.hf import read_chat_template
from xbench.models.llava import LlavaBase

TOWER = "pixtral"
#: most patches the tower reads in one sequence when re-forwarding copies (one 1024 px image of pixtral-12b)
TOWER_TOKENS = 4096


class PixtralImageTextProcessor:
    """PixtralProcessor's work for images and text, without torchvision (see the module docstring).

    ``__call__(images, text)``: the image processor's ``pixel_values`` / ``image_sizes`` with patches of
    ``patch_size * spatial_merge_size``, and each text's one ``image_token`` expanded to the rows of its
    image (``w`` image tokens then a break per row, the last break the end token), tokenised without
    adding special tokens when the rendered text already starts with BOS (the chat template renders it).
    """

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None, *, patch_size: int = 16,
                 spatial_merge_size: int = 1, image_token: str = "[IMG]", image_break_token: str = "[IMG_BREAK]",
                 image_end_token: str = "[IMG_END]") -> None:  # fmt: skip
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.patch_size = int(patch_size)
        self.spatial_merge_size = int(spatial_merge_size)
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        unknown = [t for t in (image_token, image_break_token, image_end_token) if t not in tokenizer.get_vocab()]
        if unknown:
            raise ModelLoadError(f"the tokenizer has no token {unknown[0]!r} (a Pixtral processor's image marker)")

    @classmethod
    def from_dir(cls, path: Path) -> "PixtralImageTextProcessor":
        """Built from ``path``'s preprocessor / processor configs, tokenizer and chat template."""
        from transformers import AutoImageProcessor, AutoTokenizer

        settings = {}
        pc = path / "processor_config.json"
        if pc.is_file():
            try:
                settings = json.loads(pc.read_text())
            except ValueError as exc:
                raise ModelLoadError(f"cannot read {pc}: {exc}") from None
        keys = ("patch_size", "spatial_merge_size", "image_token", "image_break_token", "image_end_token")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if tokenizer.pad_token is None:  # pixtral-12b has none; left padding is masked, so EOS serves
            tokenizer.pad_token = tokenizer.eos_token
        return cls(
            AutoImageProcessor.from_pretrained(str(path), local_files_only=True), tokenizer,
            read_chat_template(path) or getattr(tokenizer, "chat_template", None),
            **{k: settings[k] for k in keys if k in settings},
        )

    @property
    def step(self) -> int:
        """Pixels per image token along each side."""
        return self.patch_size * self.spatial_merge_size

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False) -> str:
        """The chat template rendered as text (its BOS included)."""
        if tokenize:
            raise ValueError("this processor renders chat templates as text only")
        return self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def image_tokens(self, height: int, width: int) -> str:
        """The placeholder text of one processed ``height x width`` image."""
        rows, cols = height // self.step, width // self.step
        row = self.image_token * cols + self.image_break_token
        return (row * rows)[: -len(self.image_break_token)] + self.image_end_token

    def __call__(self, images: Sequence[Any], text: Sequence[str], return_tensors: str = "pt", padding: bool = True):
        from transformers import BatchFeature

        images, text = list(images), list(text)
        if len(images) != len(text):
            raise ValueError(f"{len(images)} images for {len(text)} texts (one image per text)")
        features = self.image_processor(images, patch_size={"height": self.step, "width": self.step},
                                        return_tensors=return_tensors)  # fmt: skip
        expanded = []
        for k, (t, (h, w)) in enumerate(zip(text, features["image_sizes"].tolist())):
            if t.count(self.image_token) != 1:
                raise ValueError(f"text {k} holds {t.count(self.image_token)} {self.image_token!r} placeholders, not 1")
            expanded.append(t.replace(self.image_token, self.image_tokens(h, w)))
        bos = self.tokenizer.bos_token
        has_bos = {bool(bos) and t.startswith(bos) for t in expanded}
        if len(has_bos) > 1:
            raise ValueError("some texts start with the BOS token and some do not")
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, padding=padding,
                                 add_special_tokens=not has_bos.pop())  # fmt: skip
        return BatchFeature({**encoded, **features})


class LlavaPixtralAdapter(LlavaBase):
    """LLaVA-type checkpoints with a Pixtral tower (see the module docstring)."""

    family = "llava_pixtral"
    description = "LlavaForConditionalGeneration with a Pixtral tower (per-image patch grids, [IMG] rows), local HF directories"
    model_types = ("llava",)
    fallback_prompt = None  # only LLaVA-1.5 checkpoints fall back to its prompt

    @classmethod
    def accepts(cls, config) -> bool:
        """Exactly the checkpoints whose ``vision_config.model_type`` is ``pixtral``."""
        return (config.get("vision_config") or {}).get("model_type") == TOWER

    @classmethod
    def load_processor(cls, path: Path) -> PixtralImageTextProcessor:
        return PixtralImageTextProcessor.from_dir(path)

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        self.patch = int(model.config.vision_config.patch_size)
        self.check_layout_settings()

    def check_layout_settings(self) -> None:
        """Refuse (``ModelLoadError``) settings under which the image tokens would not be one cell per patch
        of the whole resized image: another tower, a dropped first token, a spatial merge (LLaVA has no
        merger), a processor patch that is not the tower's (the processor imposes it on its image processor),
        a centre crop."""
        cfg, proc = self.model.config, self.processor
        ip = proc.image_processor
        problems = {
            "vision_config.model_type": (cfg.vision_config.model_type, TOWER),
            "vision_feature_select_strategy": (cfg.vision_feature_select_strategy, "full"),
            "processor spatial_merge_size": (proc.spatial_merge_size, 1),
            "processor patch_size": (proc.patch_size, self.patch),
            "image processor do_center_crop": (bool(getattr(ip, "do_center_crop", False)), False),
        }
        bad = [f"{k} is {got!r}, needs {want!r}" for k, (got, want) in problems.items() if got != want]
        if bad:
            raise ModelLoadError(f"model {self.name!r} ({self.family}): " + "; ".join(bad))

    # ------------------------------------------------------------------ layout
    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        """One grid over the processed ``image_sizes[i]``; its patches read the whole original image
        (sides rounded up to whole patches when resized; only whole patches otherwise)."""
        ph, pw = (int(v) for v in inputs["image_sizes"][i])
        gh, gw = ph // self.patch, pw // self.patch
        H, W = image.height, image.width
        region = (0.0, 0.0, gh * self.patch * H / ph, gw * self.patch * W / pw)
        return single_grid((gh, gw), region, (H, W))

    def sample_pixels(self, inputs, i: int) -> torch.Tensor:
        """Row ``i``'s processed image without the batch's padding: ``[1, 3, h, w]``."""
        ph, pw = (int(v) for v in inputs["image_sizes"][i])
        return inputs["pixel_values"][i : i + 1, :, :ph, :pw]

    def image_inputs(self, inputs, i: int) -> Mapping[str, Any]:
        return {"image_sizes": inputs["image_sizes"][i : i + 1]}

    def forward_inputs(self, generation: Generation, pixel_values: torch.Tensor) -> dict[str, Any]:
        """``B`` copies of the generation's image ``[B, 3, h, w]``. One copy goes through the model as
        given (its tower attentions are reported); several go through the tower in groups of at most
        :data:`TOWER_TOKENS` patches, their features handed to the model: the tower would otherwise
        attend over all ``B * n`` patches at once behind a block-diagonal mask, ``B**2`` times the
        attention memory of one image (the same numbers; no tower attentions are reported)."""
        sizes = generation.image_inputs.get("image_sizes")
        if sizes is None or tuple(pixel_values.shape[-2:]) != tuple(int(v) for v in sizes[0]):
            raise ValueError(
                f"model {self.name!r}: images of shape {tuple(pixel_values.shape)} do not match the image size "
                f"{None if sizes is None else sizes[0].tolist()} of generation {generation.sample_id!r}"
            )
        sizes = sizes.to(self.device)
        if len(pixel_values) == 1:
            return {"pixel_values": pixel_values, "image_sizes": sizes}
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features = []
        for group in pixel_values.split(max(1, TOWER_TOKENS // generation.layout.n_cells)):
            out = self.model.model.get_image_features(pixel_values=group, image_sizes=sizes.expand(len(group), -1))
            features.extend(out.pooler_output)  # one [n, d] per copy
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, 1, h, w]``: each pixel's patch cell on the generation's grid."""
        pv = generation.pixel_values
        return layout.square_cells(generation.layout.grids[0], self.patch, pv.shape[-2:], 0, pv.device)[None, None]

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        """Patch ``j`` of the convolution's row-major output is cell ``j``."""
        return torch.arange(generation.layout.n_cells)


@hookimpl
def xbench_register_model_families(registry):
    registry.register(LlavaPixtralAdapter)
