"""SAM2's mask decoder for grid proposals, doing only the work whose result is used.

The same network, weights and arithmetic (up to float rounding; docs/PERFORMANCE.md gives the measured
differences per dtype) as ``sam2.modeling.sam.mask_decoder.MaskDecoder`` called with
``multimask_output=True`` on point prompts without a mask input, followed by the best of the three masks
and the predicted-IoU filter (docs/method.md 2.3-2.4). What it leaves out, and why it may:

1. **Per-prompt copies of the image.** SAM2 repeats the image embedding and its positional encoding for
   every prompt and adds the dense (no-mask) prompt embedding to each copy; here they are one tensor per
   image, broadcast.
2. **The first two-way layer's image-token projections.** Until that layer's last step the image tokens are
   the same for every prompt of an image, so the keys and values of token-to-image attention and the
   queries of image-to-token attention are projected once per image. Token-to-image attention of all the
   prompts of an image is one attention of all their tokens against the image's keys (each query row is
   computed alone in attention, so folding prompts into rows changes nothing).
3. **Positional-encoding, bias and residual adds.** ``W (x + pe) + b = W x + (W pe + b)``: the second term
   is computed once per model and added by the matrix product itself (``baddbmm``). The residual of each
   image-to-token attention is added by its output projection's product too, its bias carried by the
   image tokens since the previous layer norm (whose bias absorbs it; the projections that read those
   tokens subtract it in their own once-per-model terms).
4. **Upscaling every prompt.** The predicted IoUs need only the transformer's IoU token, so the output
   upscaling runs only for prompts whose best IoU passes the threshold. Its two 2x2 stride-2 transposed
   convolutions, with the high-resolution features and biases added, are two matrix products in token
   order (a 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output block), and
   ``LayerNorm2d`` is one ``layer_norm``; the pixels are put in image order once, for the one mask kept.
5. **Three masks per prompt.** The hypernetwork product runs for the best of the three only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageState:
    """What the decoder needs of a batch of images, computed once per batch (:meth:`ProposalDecoder.image_state`).

    ``I`` images, ``HW`` image tokens of ``C`` channels, ``Ci`` attention channels.
    """

    keys: torch.Tensor  # [I, HW, C] image tokens with the no-mask embedding added: the first layer's keys
    first_residual: torch.Tensor  # [I, HW, C] keys + the first image-to-token output projection's bias
    first_keys: torch.Tensor  # [I, heads, HW, Ci / heads] the first token-to-image attention's keys
    first_values: torch.Tensor  # [I, heads, HW, Ci / heads] and values
    first_image_queries: torch.Tensor  # [I, heads, HW, Ci / heads] the first image-to-token attention's queries
    upscale_terms: tuple[torch.Tensor, torch.Tensor]  # high-res features + biases in token order (see upscale)
    pe_terms: dict[str, torch.Tensor]  # ``W pe + b`` of the later projections of ``keys + pe`` ([HW, Ci])
    grid_hw: tuple[int, int]  # the image tokens' grid

    def select(self, index: int) -> ImageState:
        """Image ``index`` of the batch alone (views)."""
        rows = slice(index, index + 1)
        terms = tuple(term[rows] if term.dim() == 3 else term for term in self.upscale_terms)
        return ImageState(self.keys[rows], self.first_residual[rows], self.first_keys[rows], self.first_values[rows],
                          self.first_image_queries[rows], terms, self.pe_terms, self.grid_hw)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C / heads]`` (SAM2's ``_separate_heads``)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, c]`` -> ``[B, N, heads * c]`` (SAM2's ``_recombine_heads``)."""
    batch, heads, tokens, channels = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * channels)


def _by_image(per_image: torch.Tensor, image_of: torch.Tensor | None) -> torch.Tensor:
    """Per-image rows for each prompt: a broadcast view for one image, a gather (a copy) for several."""
    return per_image if image_of is None else per_image.index_select(0, image_of)


def _project(x: torch.Tensor, linear: nn.Linear, term: torch.Tensor) -> torch.Tensor:
    """``linear(x + pe)`` as ``x W^T + term`` with ``term = pe W^T + b`` (``[HW, Ci]``), in one product."""
    return torch.baddbmm(term, x, linear.weight.t().expand(x.shape[0], -1, -1))


def _pixel_blocks(features: torch.Tensor, grid_hw: tuple[int, int], levels: int) -> torch.Tensor:
    """``[I, c, h * 2**levels, w * 2**levels]`` features in the upscaling's token order: ``[I, h * w * 4**(levels - 1),
    4 * c]``, each output pixel of the last 2x2 block at its input pixel's row (see :meth:`ProposalDecoder.upscale`)."""
    batch, channels = features.shape[:2]
    height, width = grid_hw
    # rows are (y, i1, ..., i_levels) and columns (x, j1, ..., j_levels), most significant first
    view = features.reshape(batch, channels, height, *[2] * levels, width, *[2] * levels)
    rows = [2 + k for k in range(levels + 1)]
    cols = [3 + levels + k for k in range(levels + 1)]
    order = [0, rows[0], cols[0]]
    for k in range(1, levels + 1):
        order += [rows[k], cols[k]]
    return view.permute(*order, 1).reshape(batch, height * width * 4 ** (levels - 1), 4 * channels)


def _transposed_conv_matrix(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2 stride-2 transposed convolution's weight as ``[in, 4 * out]``, columns ordered (i, j, out)."""
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, 4 * conv.out_channels)


class ProposalDecoder(nn.Module):
    """SAM2's mask decoder for proposals from positive point prompts (module docstring).

    Holds the SAM2 model's prompt encoder and mask decoder (their weights, in their dtype) and the terms
    computed once per model. :meth:`image_state` runs once per batch of images, :meth:`tokens` once per
    batch of prompts, :meth:`upscale` for the prompts that pass the threshold; :meth:`forward` chains them.
    Each of the last two can be compiled on its own (``torch.compile``; :meth:`upscale` with a dynamic
    number of prompts).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.decoder = model.sam_mask_decoder
        self.transformer = self.decoder.transformer
        upscaling = self.decoder.output_upscaling
        self.dc1, self.ln1, self.act1, self.dc2, self.act2 = upscaling
        for conv in (self.dc1, self.dc2):
            if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2) or tuple(conv.padding) != (0, 0):
                raise ValueError("ProposalDecoder needs SAM2's 2x2 stride-2 output upscaling")
        self.first_token = 1 if self.decoder.pred_obj_scores else 0  # the IoU token's position

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.iou_token.weight.dtype

    def _shift(self, index: int) -> torch.Tensor | float:
        """What the image tokens entering layer ``index`` carry on top of their value: that layer's
        image-to-token output bias, which its residual would add (0 past the last layer)."""
        layers = self.transformer.layers
        return layers[index].cross_attn_image_to_token.out_proj.bias if index < len(layers) else 0.0

    def _norm_keys(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s last layer norm, its output shifted for the next layer (:meth:`_shift`) by the
        norm's own bias."""
        norm = self.transformer.layers[index].norm4
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias + self._shift(index + 1), norm.eps)

    def _pe_terms(self, pe: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms of the ``[HW, C]`` positional encoding, the same for every image, of the projections
        after the first layer. Keys entering layer l are shifted by ``s`` (:meth:`_shift`), so
        ``W (keys + pe) + b = W keys' + (W (pe - s) + b)`` and ``W keys + b = W keys' + (b - W s)``."""
        terms = {}
        for index, layer in enumerate(self.transformer.layers[1:], start=1):
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            shifted = pe - self._shift(index)
            terms[f"t2i_k{index}"] = F.linear(shifted, t2i.k_proj.weight, t2i.k_proj.bias)
            terms[f"t2i_v_bias{index}"] = t2i.v_proj.bias - t2i.v_proj.weight @ self._shift(index)
            terms[f"i2t_q{index}"] = F.linear(shifted, i2t.q_proj.weight, i2t.q_proj.bias)
        final = self.transformer.final_attn_token_to_image
        terms["final_k"] = F.linear(pe, final.k_proj.weight, final.k_proj.bias)
        return terms

    def image_state(self, image_embed: torch.Tensor, high_res_feats: list[torch.Tensor]) -> ImageState:
        """The per-image work for ``[I, C, h, w]`` embeddings and the high-resolution levels
        (``[I, C/8, 4h, 4w]``, ``[I, C/4, 2h, 2w]``) of :class:`labeler.models.sam2_inference.Sam2Features`."""
        dtype = self.dtype
        pe = self.prompt_encoder.get_dense_pe().to(dtype).flatten(2).permute(0, 2, 1)[0]  # [HW, C]
        layer = self.transformer.layers[0]
        heads = layer.cross_attn_token_to_image.num_heads
        no_mask = self.prompt_encoder.no_mask_embed.weight.to(dtype)  # [1, C]
        keys = image_embed.to(dtype).flatten(2).permute(0, 2, 1) + no_mask
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        with_pe = keys + pe
        grid_hw = tuple(image_embed.shape[-2:])
        bias1 = self.dc1.bias.repeat(4)
        bias2 = self.dc2.bias.repeat(4)
        if self.decoder.use_high_res_features:
            feat_s0, feat_s1 = (level.to(dtype) for level in high_res_feats)
            terms = (_pixel_blocks(feat_s1, grid_hw, 1) + bias1, _pixel_blocks(feat_s0, grid_hw, 2) + bias2)
        else:
            terms = (bias1, bias2)
        return ImageState(
            keys=keys,
            first_residual=keys + i2t.out_proj.bias,
            first_keys=_heads(t2i.k_proj(with_pe), heads),
            first_values=_heads(t2i.v_proj(keys), heads),
            first_image_queries=_heads(i2t.q_proj(with_pe), heads),
            upscale_terms=terms,
            pe_terms=self._pe_terms(pe),
            grid_hw=grid_hw,
        )

    def _first_layer(self, state: ImageState, queries: torch.Tensor, image_of: torch.Tensor | None):
        layer = self.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        heads = t2i.num_heads
        point_embedding = queries
        queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))  # no PE, no residual: SAM2's first layer
        q = t2i.q_proj(queries + point_embedding)
        prompts, tokens = q.shape[:2]
        if image_of is None:  # every prompt's tokens in one attention against the image
            out = F.scaled_dot_product_attention(_heads(q.reshape(1, prompts * tokens, -1), heads),
                                                 state.first_keys, state.first_values)
            out = _merge_heads(out).reshape(prompts, tokens, -1)
        else:
            out = _merge_heads(F.scaled_dot_product_attention(
                _heads(q, heads), _by_image(state.first_keys, image_of), _by_image(state.first_values, image_of)))
        queries = layer.norm2(queries + t2i.out_proj(out))
        queries = layer.norm3(queries + layer.mlp(queries))
        with_pe = queries + point_embedding
        image_queries = state.first_image_queries
        image_queries = image_queries.expand(prompts, -1, -1, -1) if image_of is None else _by_image(image_queries, image_of)
        out = _merge_heads(F.scaled_dot_product_attention(image_queries, _heads(i2t.k_proj(with_pe), heads),
                                                          _heads(i2t.v_proj(queries), heads)))
        residual = state.first_residual[0] if image_of is None else _by_image(state.first_residual, image_of)
        keys = self._norm_keys(0, torch.baddbmm(residual, out, i2t.out_proj.weight.t().expand(prompts, -1, -1)))
        return queries, keys

    def _layer(self, state: ImageState, index: int, queries: torch.Tensor, keys: torch.Tensor,
               point_embedding: torch.Tensor):
        layer = self.transformer.layers[index]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        heads = t2i.num_heads
        q = queries + point_embedding
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        out = F.scaled_dot_product_attention(
            _heads(t2i.q_proj(queries + point_embedding), heads),
            _heads(_project(keys, t2i.k_proj, state.pe_terms[f"t2i_k{index}"]), heads),
            _heads(F.linear(keys, t2i.v_proj.weight, state.pe_terms[f"t2i_v_bias{index}"]), heads))
        queries = layer.norm2(queries + t2i.out_proj(_merge_heads(out)))
        queries = layer.norm3(queries + layer.mlp(queries))
        with_pe = queries + point_embedding
        out = F.scaled_dot_product_attention(
            _heads(_project(keys, i2t.q_proj, state.pe_terms[f"i2t_q{index}"]), heads),
            _heads(i2t.k_proj(with_pe), heads), _heads(i2t.v_proj(queries), heads))
        # keys carry this layer's output bias already (_norm_keys): the product adds the residual
        out = torch.baddbmm(keys, _merge_heads(out), i2t.out_proj.weight.t().expand(keys.shape[0], -1, -1))
        return queries, self._norm_keys(index, out)

    def tokens(self, state: ImageState, sparse: torch.Tensor, image_of: torch.Tensor | None = None):
        """The two-way transformer and the heads for ``[N, T, C]`` sparse prompt embeddings.

        Args:
            state: the images' :class:`ImageState`.
            sparse: the prompts' sparse embeddings (SAM2's prompt encoder).
            image_of: ``[N]`` the image of each prompt; None when all are of the first image.

        Returns:
            ``src`` (``[N, HW, C]`` image tokens after the transformer), ``iou`` (``[N, 3]`` predicted IoUs of
            the three multimask outputs) and ``hyper`` (``[N, 3, C/8]`` their hypernetwork vectors).
        """
        decoder, transformer = self.decoder, self.transformer
        parts = ([decoder.obj_score_token.weight] if decoder.pred_obj_scores else []) + [
            decoder.iou_token.weight, decoder.mask_tokens.weight]
        output_tokens = torch.cat(parts, dim=0)
        point_embedding = torch.cat((output_tokens.expand(sparse.shape[0], -1, -1), sparse.to(self.dtype)), dim=1)
        queries, keys = self._first_layer(state, point_embedding, image_of)
        for index in range(1, len(transformer.layers)):
            queries, keys = self._layer(state, index, queries, keys, point_embedding)
        final = transformer.final_attn_token_to_image
        heads = final.num_heads
        out = F.scaled_dot_product_attention(
            _heads(final.q_proj(queries + point_embedding), heads),
            _heads(_project(keys, final.k_proj, state.pe_terms["final_k"]), heads), _heads(final.v_proj(keys), heads))
        queries = transformer.norm_final_attn(queries + final.out_proj(_merge_heads(out)))
        iou = decoder.iou_prediction_head(queries[:, self.first_token])[:, 1:]
        mask_tokens = queries[:, self.first_token + 2 : self.first_token + 1 + decoder.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, k]) for k, mlp in enumerate(decoder.output_hypernetworks_mlps[1:])], 1)
        return keys, iou, hyper

    def upscale(self, state: ImageState, src: torch.Tensor, hyper: torch.Tensor,
                image_of: torch.Tensor | None = None) -> torch.Tensor:
        """``[K, 4h, 4w]`` mask logits of ``[K, HW, C]`` transformer outputs and their ``[K, C/8]``
        hypernetwork vectors (``image_of`` as in :meth:`tokens`).

        The first transposed convolution maps image token (y, x) to the 2x2 block (2y + i, 2x + j); as a
        product in token order its output row (y, x) holds the block's four pixels, columns (i, j, channel).
        The second does the same for each of those pixels, so the final row (y, x, i, j) holds columns
        (i2, j2, channel) of pixel (4y + 2i + i2, 4x + 2j + j2). The high-resolution features and biases
        are laid out in that order once per image (:meth:`image_state`).
        """
        count = src.shape[0]
        term1, term2 = state.upscale_terms
        if term1.dim() == 3:
            term1 = term1[0] if image_of is None else _by_image(term1, image_of)
            term2 = term2[0] if image_of is None else _by_image(term2, image_of)
        out1 = torch.baddbmm(term1, src, _transposed_conv_matrix(self.dc1).expand(count, -1, -1))
        channels1 = self.dc1.out_channels
        out1 = self.act1(F.layer_norm(out1.view(count, -1, channels1), (channels1,), self.ln1.weight, self.ln1.bias,
                                      self.ln1.eps))
        out2 = self.act2(torch.baddbmm(term2, out1, _transposed_conv_matrix(self.dc2).expand(count, -1, -1)))
        logits = torch.bmm(out2.view(count, -1, self.dc2.out_channels), hyper[:, :, None])
        height, width = state.grid_hw
        blocks = logits.view(count, height, width, 2, 2, 2, 2)  # (y, x, i, j, i2, j2)
        return blocks.permute(0, 1, 3, 5, 2, 4, 6).reshape(count, 4 * height, 4 * width)
