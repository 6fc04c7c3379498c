"""Re-ViLM (docs/algorithms.md §7): a frozen llama DecoderLM (`self.lm`) with Flamingo's gated cross-attention
to the image and gated cross-attention to retrieved captions inserted before chosen LM layers.

    image (3, S, S) -> CLIP ViT (frozen) -> hidden states -> Perceiver resampler -> n_latents media tokens
    image -> CLIP ViT -> projected CLS: the image embedding the retriever (runtime/retrieval.py) indexes
    retrieved captions (n_neighbors x neighbor_length ids) -> LM embedding -> 2-layer bidirectional encoder
    text: for each LM layer i: [media block i] -> [retrieval block i] -> LM layer i

The model runs its own loop over `lm.layers` (with `lm.embed_tokens`, `lm.rope`, `lm.logits`), so the LM is
the zoo's llama DecoderLM with its weights and state layout unchanged; every gate starts at 0, so a new
Re-ViLM computes exactly its LM's logits.

Generation (one image per prompt, the image before the prompt text, so every text token sees it):
- `encode_media(pixel_values, caption_ids, caption_lengths, state)`: once per request, writes each media
  block's keys and values of the resampled image ("media_k{i}", "media_v{i}": (B, H, n_latents, D)) and
  each retrieval block's keys and values of the encoded captions ("retrieved_k{i}", "retrieved_v{i}":
  (B, H, n_neighbors * neighbor_length, D)) with the caption mask ("retrieved_mask0": (B, R) bool) into
  the state;
- `prefill` / `decode_step`: DecoderLM's, with the cross-attention blocks reading those entries.
`forward(input_ids, pixel_values, media_locations, ...)` is the uncached oracle and takes several images
per sequence with Flamingo's masking (text sees only the most recent image at or before it).
"""

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError
from zoo.models.revilm.config import RevilmConfig
from zoo.nn.flamingo import CaptionEncoder, GatedCrossAttentionBlock, PerceiverResampler, media_visibility
from zoo.nn.norms import LayerNorm, RMSNorm
from zoo.nn.state import StateEntry, allocate_state, layer_view
from zoo.nn.transformer import DecoderLM, init_normal
from zoo.nn.vit import VisionTransformer

RETRIEVED_MASK = "retrieved_mask"  # one state entry (under layer 0): which retrieved-caption tokens are real


class RevilmLM(nn.Module):
    takes_media = True  # the engine passes one image (and its retrieved captions) per prompt to encode_media

    def __init__(self, config: RevilmConfig):
        super().__init__()
        c = self.config = config
        self.lm = DecoderLM(c.lm)
        self.vision = VisionTransformer(c.vision)
        self.resampler = PerceiverResampler(
            c.vision.d_model, c.resampler_depth, c.resampler_heads, c.resampler_head_dim, c.n_latents,
            act=c.resampler_activation,
        )  # fmt: skip

        def block(kv_dim: int) -> GatedCrossAttentionBlock:
            return GatedCrossAttentionBlock(
                c.lm.d_model, kv_dim, c.xattn_heads, c.xattn_head_dim, c.xattn_d_ff, c.lm.norm_eps, c.lm.activation
            )

        self.media_xattn = nn.ModuleDict({str(i): block(c.vision.d_model) for i in c.media_layers})
        self.retrieval_xattn = nn.ModuleDict({str(i): block(c.lm.d_model) for i in c.retrieval_layers})
        self.caption_encoder = CaptionEncoder(
            c.lm.d_model, c.encoder_layers, c.lm.n_heads, c.lm.head_dim, c.lm.d_ff, c.neighbor_length, c.lm.norm_eps
        )
        self.lm.requires_grad_(False)  # frozen, as in Flamingo and Re-ViLM: only the new blocks train
        self.vision.requires_grad_(False)

    def reset_parameters(self):
        """LM and ViT as their own inits; new blocks' matrices N(0, init_std), norms 1, resampler latents
        N(0, 1) (IDEFICS), gates 0 (so the model is its LM)."""
        self.lm.reset_parameters()
        self.vision.reset_parameters()
        std = self.config.lm.init_std
        for part in (self.resampler, self.media_xattn, self.retrieval_xattn, self.caption_encoder):
            for module in part.modules():
                if not init_normal(module, std) and isinstance(module, (LayerNorm, RMSNorm)):
                    module.reset_parameters()
            for name, param in part.named_parameters():
                if name.endswith(("alpha_cross_attn", "alpha_dense")):
                    nn.init.zeros_(param)
        nn.init.normal_(self.resampler.latents)
        nn.init.normal_(self.caption_encoder.position_embedding, std=std)

    # -- media and retrieval context ---------------------------------------------------------------------

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The unit-norm CLIP image embedding (B, E) of pixels (B, 3, S, S): what the retriever indexes."""
        return F.normalize(self.vision(pixel_values)[1].float(), dim=-1)

    def embedding_model_id(self) -> str:
        """Names the embedding function: the vision tower's shape and a hash of its weights (an index built by
        other weights gives other embeddings, so runtime/retrieval.py refuses it)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.vision.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        v = self.config.vision
        return f"clip-vit-{v.d_model}x{v.n_layers}-p{v.patch_size}-{v.image_size}:{digest.hexdigest()[:16]}"

    def media_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, S, S) -> resampled media tokens (N, n_latents, vision d_model)."""
        return self.resampler(self.vision(pixel_values)[0])

    def encode_captions(self, caption_ids: torch.Tensor, caption_lengths: torch.Tensor):
        """caption_ids (B, K, Lc), caption_lengths (B, K) -> (encoded (B, K * Lc, d), real-token mask (B, K * Lc))."""
        B, K, Lc = caption_ids.shape
        mask = torch.arange(Lc, device=caption_ids.device) < caption_lengths[..., None]
        encoded = self.caption_encoder(self.lm.embed(caption_ids.reshape(B * K, Lc)), mask.reshape(B * K, Lc))
        return encoded.reshape(B, K * Lc, -1), mask.reshape(B, K * Lc)

    def context_keys_values(self, latents, caption_ids, caption_lengths) -> dict[str, torch.Tensor]:
        """The cross-attention keys and values (under their state keys) of media tokens and captions."""
        kv = {}
        for i, block in self.media_xattn.items():
            kv[f"media_k{i}"], kv[f"media_v{i}"] = block.keys_values(latents)
        if self.retrieval_xattn:
            encoded, mask = self.encode_captions(caption_ids, caption_lengths)
            for i, block in self.retrieval_xattn.items():
                kv[f"retrieved_k{i}"], kv[f"retrieved_v{i}"] = block.keys_values(encoded)
            kv[f"{RETRIEVED_MASK}0"] = mask
        return kv

    def cross_attend(self, i: int, x: torch.Tensor, kv: dict, media_visible, retrieved_visible) -> torch.Tensor:
        """The blocks placed before LM layer i: media, then retrieval."""
        if str(i) in self.media_xattn:
            x = self.media_xattn[str(i)](x, kv[f"media_k{i}"], kv[f"media_v{i}"], media_visible)
        if str(i) in self.retrieval_xattn:
            x = self.retrieval_xattn[str(i)](x, kv[f"retrieved_k{i}"], kv[f"retrieved_v{i}"], retrieved_visible)
        return x

    def retrieved_visibility(self, kv: dict) -> torch.Tensor | None:
        return kv[f"{RETRIEVED_MASK}0"][:, None, None, :] if self.retrieval_xattn else None

    # -- full forward (the oracle of the cached paths) ---------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        media_locations: torch.Tensor,
        caption_ids: torch.Tensor | None = None,
        caption_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) of input_ids (B, L) with images pixel_values (B, N, 3, S, S) placed where
        media_locations (B, L) is True (image n at the n-th True of its row), and retrieved captions
        caption_ids (B, K, Lc) with caption_lengths (B, K) (default: none retrieved)."""
        B, L = input_ids.shape
        n_images = pixel_values.shape[1]
        latents = self.media_latents(pixel_values.flatten(0, 1)).reshape(B, n_images * self.config.n_latents, -1)
        if caption_ids is None:
            caption_ids, caption_lengths = no_captions(self.config, B, input_ids.device)
        kv = self.context_keys_values(latents, caption_ids, caption_lengths)
        media_visible = media_visibility(media_locations, n_images, self.config.n_latents)
        retrieved_visible = self.retrieved_visibility(kv)
        positions = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.lm.embed_tokens(input_ids, positions)
        rope = self.lm.rope(positions, x.dtype)
        for i, layer in enumerate(self.lm.layers):
            x = layer(self.cross_attend(i, x, kv, media_visible, retrieved_visible), rope)
        return self.lm.logits(x)

    # -- generation ----------------------------------------------------------------------------------------

    def state_spec(self) -> list[StateEntry]:
        c = self.config
        blocks = [*self.media_xattn.values(), *self.retrieval_xattn.values()]
        H = blocks[0].n_heads if blocks else c.xattn_heads  # local to a rank when the model is tensor-parallel
        D = c.xattn_head_dim
        spec = self.lm.state_spec()
        for i in c.media_layers:
            spec += [StateEntry(name, i, ("batch", H, c.n_latents, D), None) for name in ("media_k", "media_v")]
        for i in c.retrieval_layers:
            spec += [
                StateEntry(n, i, ("batch", H, c.retrieved_tokens, D), None) for n in ("retrieved_k", "retrieved_v")
            ]
        if c.retrieval_layers:
            spec.append(StateEntry(RETRIEVED_MASK, 0, ("batch", c.retrieved_tokens), "bool"))
        return spec

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    def encode_media(
        self,
        pixel_values: torch.Tensor,
        caption_ids: torch.Tensor | None,
        caption_lengths: torch.Tensor | None,
        state: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """One image per row (B, 3, S, S) and its retrieved captions (B, K, Lc) / (B, K) (None: none): the
        media and caption keys and values, computed once, into the state (module docstring)."""
        if caption_ids is None:
            caption_ids, caption_lengths = no_captions(self.config, pixel_values.shape[0], pixel_values.device)
        for key, tensor in self.context_keys_values(
            self.media_latents(pixel_values), caption_ids, caption_lengths
        ).items():
            state[key].copy_(tensor)
        return state

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """DecoderLM.prefill with the cross-attention blocks over the state's media and captions."""
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.lm.embed_tokens(input_ids, positions)
        rope = self.lm.rope(positions, x.dtype)
        media_visible = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=x.device)  # the image precedes the text
        retrieved_visible = self.retrieved_visibility(state)
        for i, layer in enumerate(self.lm.layers):
            x = self.cross_attend(i, x, state, media_visible, retrieved_visible)
            x = layer(x, rope, layer_view(state, layer.attn.state_names, i), lengths)
        last = x[torch.arange(B, device=x.device), lengths - 1]
        return self.lm.logits(last), state

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """DecoderLM.decode_step with the cross-attention blocks over the state's media and captions."""
        x = self.lm.embed_tokens(tokens[:, None], positions[:, None])
        rope = self.lm.rope(positions[:, None], x.dtype)
        media_visible = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=x.device)
        retrieved_visible = self.retrieved_visibility(state)
        for i, layer in enumerate(self.lm.layers):
            x = self.cross_attend(i, x, state, media_visible, retrieved_visible)
            x = layer.decode(x, positions, rope, layer_view(state, layer.attn.state_names, i))
        return self.lm.logits(x[:, 0]), state


def no_captions(config: RevilmConfig, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty retrieval context (caption_ids (B, K, Lc), caption_lengths (B, K)): every caption token
    masked, so the retrieval blocks' attention adds 0."""
    ids = torch.zeros(batch, config.n_neighbors, config.neighbor_length, dtype=torch.long, device=device)
    return ids, torch.zeros(batch, config.n_neighbors, dtype=torch.long, device=device)


def pack_captions(retrieved: list[list[list[int]]], config: RevilmConfig, device=None):
    """Per prompt, a list of retrieved captions' token ids -> (caption_ids (B, K, Lc), caption_lengths (B, K)):
    at most K = n_neighbors captions, each cut to Lc = neighbor_length tokens; fewer are padded (length 0)."""
    K, Lc, vocab = config.n_neighbors, config.neighbor_length, config.vocab_size
    ids = torch.zeros(len(retrieved), K, Lc, dtype=torch.long)
    lengths = torch.zeros(len(retrieved), K, dtype=torch.long)
    for row, captions in enumerate(retrieved):
        if len(captions) > K:
            raise ZooError(f"prompt {row} has {len(captions)} retrieved captions; the model reads at most {K}")
        for j, caption in enumerate(captions):
            bad = [t for t in caption if not 0 <= t < vocab]
            if bad:
                raise ZooError(
                    f"retrieved caption {j} of prompt {row} has ids outside the vocabulary [0, {vocab}): {bad[:5]}"
                )
            caption = caption[:Lc]
            ids[row, j, : len(caption)] = torch.tensor(caption, dtype=torch.long)
            lengths[row, j] = len(caption)
    return ids.to(device), lengths.to(device)
