"""Idefics3 family adapter (SmolVLM, Idefics3) over transformers' ``Idefics3ForConditionalGeneration``.

Layout (:mod:`xbench.models.idefics3_layout` has the arithmetic): the processor splits the image
into ``rows x cols`` tiles plus a global (downscaled) image; every tile is a ``g x g`` grid of
image tokens after the connector's pixel shuffle (``g = (S // patch) / scale_factor``), so the
layout has one grid per tile then the global one, in token order, and maps are ``(N,)`` over all
cells. Tile markers (``<row_r_col_c>``, ``<global-img>``) and ``<fake_token_around_image>`` are
text tokens, not cells. ``pixel_values`` is ``[1, n_tiles, C, S, S]`` (this image's tiles only; a
batch's padding tiles are dropped) with its ``pixel_attention_mask`` kept in ``image_inputs``.

Re-forwards run the tower and connector here, not through transformers' merge, which drops every
all-zero tile as batch padding (a tile a perturbation filled with zeros would vanish and the image
tokens no longer match): the features of every tile are scattered onto the image tokens' input
embeddings.

Prompt: the checkpoint's chat template (no family fallback).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from xbench.api import ForwardOutput, Generation
from xbench.errors import AttentionsUnavailableError, ModelCapabilityError, ModelLoadError
from xbench.hookspecs import hookimpl
from xbench.image_layout import ImageLayout
from xbench.models import idefics3_layout as lay
from xbench.models.hf import HFAdapter


class Idefics3Adapter(HFAdapter):
    """Idefics3-type checkpoints (see the module docstring)."""

    family = "idefics3"
    description = (
        "Idefics3ForConditionalGeneration (SmolVLM, Idefics3: tiles + global image, pixel shuffle), local HF directories"
    )
    model_types = ("idefics3",)
    model_class = "Idefics3ForConditionalGeneration"
    pixel_channel_dim = 2  # pixel_values [1, n_tiles, C, S, S]

    def __init__(self, model, processor, identity, device, dtype, attn_implementation) -> None:
        super().__init__(model, processor, identity, device, dtype, attn_implementation)
        cfg, vc = model.config, model.config.vision_config
        self.geometry = lay.TileGeometry(patch=int(vc.patch_size), scale=int(cfg.scale_factor), tile=int(vc.image_size))
        if self.geometry.side % self.geometry.scale:
            raise ModelLoadError(
                f"model {self.name!r}: {self.geometry.side} patches per tile side do not pixel-shuffle by "
                f"scale_factor {cfg.scale_factor}"
            )
        seq_len = getattr(processor, "image_seq_len", None)
        if seq_len != self.geometry.tokens_per_tile:
            raise ModelLoadError(
                f"model {self.name!r}: the processor's image_seq_len {seq_len} is not the "
                f"{self.geometry.tokens_per_tile} tokens a tile gives ((image_size // patch_size)**2 / scale_factor**2)"
            )
        if not getattr(processor.image_processor, "do_pad", True):
            raise ModelLoadError(
                f"model {self.name!r}: its image processor has do_pad false, so a batch's images cannot be "
                "stacked and no pixel_attention_mask marks their padding"
            )
        tile_edge = _longest_edge(getattr(processor.image_processor, "max_image_size", None))
        if tile_edge != self.geometry.tile:
            raise ModelLoadError(
                f"model {self.name!r}: the processor cuts tiles of {tile_edge} px but the vision tower reads "
                f"{self.geometry.tile} px"
            )
        ids = self.tokenizer.convert_tokens_to_ids
        tiles = {ids(f"<row_{r}_col_{c}>"): (r, c) for r in range(1, 7) for c in range(1, 7)}
        self.markers = lay.Markers(image=self.image_token_id, global_image=ids(processor.global_image_tag), tiles=tiles)
        if {None, self.tokenizer.unk_token_id} & {self.markers.global_image, *tiles}:
            raise ModelLoadError(f"model {self.name!r}: its tokenizer lacks <global-img> or the <row_r_col_c> tile markers")

    # ------------------------------------------------------------------ layout
    @property
    def language_model(self):
        return self.model.model.text_model

    def _real_tiles(self, inputs, i: int) -> int:
        """Row ``i``'s number of tiles: the processor pads a batch with all-padding tiles after them."""
        real = inputs["pixel_attention_mask"][i].flatten(1).any(dim=1)
        n = int(real.sum())
        if n == 0 or not bool(real[:n].all()):
            raise ModelCapabilityError(f"model {self.name!r}: row {i}'s tiles are not followed only by padding tiles")
        return n

    def layout_of(self, inputs, i: int, image) -> ImageLayout:
        """Tiles read from the prompt's markers, their real pixels from the attention mask."""
        prompt_ids = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()
        rows, cols, _ = lay.read_split(prompt_ids, self.markers, self.geometry.tokens_per_tile, self.name)
        n = self._real_tiles(inputs, i)
        if n != rows * cols + 1:
            raise ModelCapabilityError(
                f"model {self.name!r}: the prompt shows a {rows}x{cols} split plus the global image but pixel_values "
                f"hold {n} tiles"
            )
        split = lay.SplitLayout(rows, cols, lay.content_sizes(inputs["pixel_attention_mask"][i, :n]))
        size = (image.height, image.width)
        g = self.geometry.grid
        return ImageLayout(((g, g),) * n, lay.cell_boxes(self.geometry, split, size), size)

    def sample_pixels(self, inputs, i: int) -> torch.Tensor:
        return inputs["pixel_values"][i : i + 1, : self._real_tiles(inputs, i)]

    def image_inputs(self, inputs, i: int) -> Mapping[str, Any]:
        return {"pixel_attention_mask": inputs["pixel_attention_mask"][i : i + 1, : self._real_tiles(inputs, i)]}

    def _pixel_mask(self, generation: Generation) -> torch.Tensor:
        """``[n_tiles, S, S]`` bool: the real pixels of ``generation``'s tiles."""
        return generation.image_inputs["pixel_attention_mask"][0].bool()

    def pixel_cells(self, generation: Generation) -> torch.Tensor:
        """``[1, n_tiles, 1, S, S]``: each pixel's cell; -1 for padding and the tile edge no patch reads."""
        return lay.pixel_cells(self.geometry, self._pixel_mask(generation).to(generation.pixel_values.device))

    # ------------------------------------------------------------------ re-forwards
    def tower(self, generation: Generation, pixel_values: torch.Tensor, output_attentions: bool = False):
        """The vision tower over every tile of ``B`` copies (``pixel_values [B, n, C, S, S]``):
        ``(features [B, n * g * g, d_text], tower output)``."""
        B, n = pixel_values.shape[:2]
        flat = pixel_values.reshape(B * n, *pixel_values.shape[2:]).to(self.dtype)
        patches = lay.patch_mask(self.geometry, self._pixel_mask(generation).to(flat.device))
        vision = self.model.model.vision_model(
            pixel_values=flat, patch_attention_mask=patches.repeat(B, 1, 1), output_attentions=output_attentions,
            return_dict=True,
        )
        features = self.model.model.connector(vision.last_hidden_state)
        return features.reshape(B, -1, features.shape[-1]), vision

    def forward(self, generation: Generation, *, pixel_values=None, output_attentions: bool = False,
                logits_to_keep: int | None = None):
        """Teacher-forced forward (see :meth:`VLM.forward` and the module docstring);
        ``vision_attentions`` are the tower's ``[B * n_tiles, heads, P, P]`` per layer."""
        pv = generation.pixel_values if pixel_values is None else pixel_values
        features, vision = self.tower(generation, pv, output_attentions)
        ids = self.input_ids(generation)
        embeds = self.model.get_input_embeddings()(ids).expand(len(pv), -1, -1).clone()
        positions = torch.tensor(generation.image_positions, device=embeds.device)
        if features.shape[1] != len(positions):
            raise ModelCapabilityError(
                f"model {self.name!r}: {features.shape[1]} image features for {len(positions)} image tokens of "
                f"sample {generation.sample_id!r}"
            )
        embeds[:, positions] = features.to(embeds.dtype)
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        outputs = self.model(inputs_embeds=embeds, output_attentions=output_attentions, use_cache=False, **extra)
        if not output_attentions:
            return ForwardOutput(outputs.logits)
        atts, tower_atts = outputs.attentions, vision.attentions
        if not atts or not tower_atts or any(a is None or a.numel() == 0 for a in (*atts, *tower_atts)):
            raise AttentionsUnavailableError(
                f"model {self.name!r} returned no attentions "
                f"(attn_implementation={self.attn_implementation!r}); load it with eager attention"
            )
        return ForwardOutput(outputs.logits, tuple(atts), tuple(tower_atts))

    # ------------------------------------------------------------------ hook points
    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The connector, whose output (the image tokens' features) enters the language model."""
        return self.model.model.connector

    def vision_layers_read(self) -> int:
        """Every tower layer: the connector reads the last one (after the post-layernorm)."""
        return int(self.model.config.vision_config.num_hidden_layers)

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """Each image token: the ``scale_factor**2`` patches the pixel shuffle concatenates into it."""
        return lay.vision_token_positions(self.geometry, generation.pixel_values.shape[1])

    def patch_features(self):
        """The tower's post-layernorm: ``[B * n_tiles, P, D]``, the first copy's tiles viewed as ``[D, n_tiles * P]``."""
        def view(output: torch.Tensor, generation: Generation) -> torch.Tensor:
            return output[: generation.pixel_values.shape[1]].reshape(-1, output.shape[-1]).T

        return self.model.model.vision_model.post_layernorm, view

    def patch_cells(self, generation: Generation) -> torch.Tensor:
        return lay.patch_cells(self.geometry, self._pixel_mask(generation))


def _longest_edge(value) -> int | None:
    if value is None:
        return None
    get = value.get if hasattr(value, "get") else lambda k, d=None: getattr(value, k, d)
    edge = get("longest_edge", None)
    return None if edge is None else int(edge)


@hookimpl
def xbench_register_model_families(registry):
    registry.register(Idefics3Adapter)
