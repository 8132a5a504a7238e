"""The Gato-style decoder-only transformer (torch; offline only: training, export, reference).

Reed et al., "A Generalist Agent" (2022): one token stream, tokens embedded by a lookup table, image patches by a
ResNet-v2 block with learned row/column encodings, learned local positions on observation tokens, pre-LN causal
transformer blocks, loss on action tokens only. The context scheme (pinned prefix + sliding window of timesteps
with rotary positions) is documented in `gato_ros.sequence`.

Two entry points share every weight:

- `forward(batch)`: whole contexts (B, T) with the prefix / sliding-window mask; training and the reference.
- `forward_cached(...)`: batch-1 incremental step over a fixed-size KV cache, the function exported to ONNX.
  The cache is four buffers per layer, read whole and never concatenated:
  prefix keys (H, Dh, P) and values (H, P, Dh) -- unrotated; ring keys (H, Dh, R) and values (H, R, Dh) --
  rotated; keys are stored transposed so scores are a plain (T, Dh) @ (Dh, slots) product. The graph returns
  only the new tokens' keys/values; the runtime writes them into its preallocated buffers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gato_ros.model.config import GatoConfig


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, rotate-half form. x (..., T, Dh); cos/sin broadcastable to (..., T, Dh/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class PatchEmbedding(nn.Module):
    """A ResNet-v2 (pre-activation, GroupNorm + GELU) block over each image patch, then a linear map to the model
    width plus learned row/column interval encodings (Gato Sec. 2.2 and App. C.2).

    With `cfg.instruction_features` > 0 the block's output features are FiLM-modulated by the instruction
    (`x * (1 + gamma) + beta`, gamma and beta linear in `gato_ros.sequence.instruction_features`; zero-initialised,
    so training starts from the unconditioned embedding)."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        p, c, s = cfg.tokenizer.patch_size, cfg.patch_channels, cfg.patch_stem_stride
        self.patch_size = p
        self.in_ch = cfg.patch_dim // (p * p)
        self.coords = cfg.patch_coords
        if self.coords:
            if cfg.spec.image_shape is None:
                raise ValueError("GatoConfig.patch_coords needs the image shape (spec.image_shape)")
            self.grid = (cfg.spec.image_shape[0] // p, cfg.spec.image_shape[1] // p)
            self.pos_bins = cfg.pos_bins
        self.stem = nn.Conv2d(self.in_ch + 2 * self.coords, c, kernel_size=s, stride=s)  # (N, c, p/s, p/s)
        self.norm1 = nn.GroupNorm(cfg.patch_groups, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(cfg.patch_groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.features = c * (p // s) ** 2
        self.proj = nn.Linear(self.features, cfg.d_model)
        self.row = nn.Embedding(cfg.pos_bins, cfg.d_model)
        self.col = nn.Embedding(cfg.pos_bins, cfg.d_model)
        self.film = nn.Linear(cfg.instruction_features, 2 * self.features) if cfg.instruction_features else None
        self.out_norm = nn.LayerNorm(cfg.d_model) if cfg.patch_norm else None

    def _cells(self, row: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) grid row and column of each patch's cell, from its position bins."""
        return tuple(torch.div(bins * n, self.pos_bins, rounding_mode="floor")
                     for bins, n in ((row, self.grid[0]), (col, self.grid[1])))  # type: ignore[return-value]

    def _coordinate_term(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """(N, c, p/s, p/s): the stem's response to the coordinate channels, looked up per cell. The stem is a
        convolution, linear in its input, and the coordinate channels depend only on the patch's cell, so the export
        convolves the image channels alone and adds this: a table of grid cells x the stem's output (the graph's
        constants, folded by ONNX Runtime at load) instead of ~30 small ops building the coordinate planes every
        call. Equal to the concatenated form up to float rounding (test_model_core)."""
        gr, gc = self.grid
        cell_r = torch.arange(gr, device=row.device).repeat_interleave(gc)
        cell_c = torch.arange(gc, device=row.device).repeat(gr)
        planes = self._planes(cell_r, cell_c).to(self.stem.weight.dtype)  # (cells, 2, p, p)
        table = F.conv2d(planes, self.stem.weight[:, self.in_ch:], None, stride=self.stem.stride)
        r, c = self._cells(row, col)
        return table[r * gc + c]

    def _coordinates(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """(N, 2, p, p) image coordinates in [-1, 1] (y, x) of every pixel of each patch. The patch's cell comes
        from its position bin (training draws a random bin inside the cell's span; any bin of the span gives the
        cell), so the coordinates are exact at training and inference alike."""
        return self._planes(*self._cells(row, col))

    def _planes(self, cell_r: torch.Tensor, cell_c: torch.Tensor) -> torch.Tensor:
        """(N, 2, p, p) coordinate planes of the patches in grid cells (cell_r, cell_c), each (N,)."""
        p = self.patch_size
        axes = []
        for cell, n in ((cell_r, self.grid[0]), (cell_c, self.grid[1])):
            offset = torch.arange(p, dtype=torch.float32, device=cell.device) + 0.5  # (p,)
            axes.append((cell.to(torch.float32)[:, None] * p + offset[None]) * (2.0 / (n * p)) - 1.0)  # (N, p)
        y, x = axes
        return torch.stack((y[:, :, None].expand(-1, p, p), x[:, None, :].expand(-1, p, p)), dim=1)

    def init_conditioning(self) -> None:
        """FiLM starts as the identity (zero weights); the patch LayerNorm's gain starts at 0.1, so a patch enters
        the residual stream at about the norm of a trained token embedding (~1) instead of sqrt(d_model)."""
        if self.out_norm is not None:
            nn.init.constant_(self.out_norm.weight, 0.1)
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, patches: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                film: torch.Tensor | None = None, folded: bool = False) -> torch.Tensor:
        """patches (N, p*p*C) in the tokenizer's (y, x, channel) order; film (N or 1, 2 * features): `self.film`
        of the instruction features (None without conditioning). `folded`: the coordinate channels' share of the
        stem from a per-cell table (`_coordinate_term`; the exported graphs), not from concatenated planes."""
        n = patches.shape[0]
        x = patches.reshape(n, self.patch_size, self.patch_size, self.in_ch).permute(0, 3, 1, 2)
        if self.coords and folded:
            x = F.conv2d(x, self.stem.weight[:, :self.in_ch], self.stem.bias, stride=self.stem.stride)
            x = x + self._coordinate_term(row, col)  # (N, c, 4, 4)
        elif self.coords:
            x = self.stem(torch.cat((x, self._coordinates(row, col)), dim=1))  # (N, C + 2, p, p) -> (N, c, 4, 4)
        else:
            x = self.stem(x)  # (N, c, 4, 4)
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        x = (x + h).flatten(1)  # (N, features)
        if film is not None:
            gamma, beta = film.chunk(2, dim=-1)
            x = x * (1.0 + gamma) + beta
        x = self.proj(x)  # (N, d)
        if self.out_norm is not None:
            x = self.out_norm(x)
        return x + self.row(row) + self.col(col)  # (N, d)


class GatoEmbedding(nn.Module):
    """Token lookup (text, bins, separator) or patch embedding, plus local and prefix position encodings."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # Last row of each position table is the "none" row (actions, episode tokens): kept at zero.
        self.local = nn.Embedding(cfg.observation_tokens + 1, cfg.d_model, padding_idx=cfg.observation_tokens)
        self.prefix = nn.Embedding(cfg.prefix_slots + 1, cfg.d_model, padding_idx=cfg.prefix_slots)
        self.patch = PatchEmbedding(cfg)

    def forward(self, tokens, patches, is_image, local_pos, row_bin, col_bin, prefix_pos,
                text_feat=None) -> torch.Tensor:
        """All inputs (..., T) except patches: (n_img, p*p*C) (any leading axes), the pixels of the image
        positions in row-major order of `is_image` -- compact, as `gato_ros.sequence.ContextBuilder` builds them;
        and text_feat (..., F), one row per context (used when the config conditions patches on the instruction)."""
        x = self.token(tokens)  # (..., T, d)
        if bool(is_image.any()):
            film = None
            if self.patch.film is not None:
                per_ctx = self.patch.film(text_feat.reshape(-1, text_feat.shape[-1]))  # (contexts, 2 * features)
                ctx_of_patch = is_image.reshape(-1, is_image.shape[-1]).nonzero()[:, 0]  # row-major, like patches
                film = per_ctx[ctx_of_patch]
            img = self.patch(patches.reshape(-1, patches.shape[-1]), row_bin[is_image], col_bin[is_image], film)
            x = x.masked_scatter(is_image.unsqueeze(-1), img.to(x.dtype))
        return x + self.local(local_pos) + self.prefix(prefix_pos)

    def forward_compact(self, tokens, patches, patch_row_bin, patch_col_bin, embed_index, local_pos, prefix_pos,
                        text_feat=None) -> torch.Tensor:
        """Export form of `forward` for one call of T new tokens: the patch branch runs on the N image positions
        only. patches (N, p*p*C) and their position bins patch_row_bin / patch_col_bin (N,); embed_index (T,): the
        row of [token embeddings (T); patch embeddings (N)] each position takes; text_feat (F,). A call without
        image positions passes one unused patch row (N >= 1), so every shape stays non-empty."""
        film = self.patch.film(text_feat[None]) if self.patch.film is not None else None  # (1, 2 * features)
        img = self.patch(patches, patch_row_bin, patch_col_bin, film, folded=True)  # (N, d)
        x = torch.cat((self.token(tokens), img))[embed_index]  # (T, d)
        return x + self.local(local_pos) + self.prefix(prefix_pos)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.h, self.dh = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, key_is_prefix, mask):
        """x (B, T, d); cos/sin (B, T, Dh/2); key_is_prefix (B, T) bool, prefix positions leading; mask (B, T, T)
        additive."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        q = q * (1.0 / math.sqrt(self.dh))
        # Prefix keys are position-free: scored with unrotated query and key (see gato_ros.sequence). Contexts put
        # the prefix first, so prefix keys fill the leading `n_pre` columns (padding there is masked anyway).
        n_pre = int(key_is_prefix.any(0).nonzero().max()) + 1 if bool(key_is_prefix.any()) else 0
        c, s = cos.unsqueeze(1)[:, :, n_pre:], sin.unsqueeze(1)[:, :, n_pre:]  # (B, 1, T - n_pre, Dh/2)
        q_rot = rope(q, cos.unsqueeze(1), sin.unsqueeze(1))
        scores = torch.cat((q @ k[:, :, :n_pre].transpose(-1, -2),  # (B, H, T, n_pre)
                            q_rot @ rope(k[:, :, n_pre:], c, s).transpose(-1, -2)), dim=-1)  # (B, H, T, T - n_pre)
        scores = scores + mask.unsqueeze(1)
        att = self.drop(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        y = (att @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, d)
        return self.proj(y)

    def forward_cached(self, x, cos_f, sin_f, swap, mask, pk, rk, v_cache, last_n: int = 0):
        """x (T, d); cos_f/sin_f (T, Dh) full-width rotary tables (`gato_ros.sequence.rope_full`); swap (Dh, Dh)
        half-swap permutation; mask (T, P+R+T) additive over [prefix slots, ring slots, new tokens]; pk (H, Dh, P)
        unrotated prefix keys, rk (H, Dh, R) rotated ring keys, v_cache (H, P+R, Dh).

        Head-major throughout (one transpose in, one out), so the graph has few shape ops and no transposed
        matmul operands. Returns y (T', d) with T' = min(T, last_n) if `last_n` (only the last tokens' outputs are
        needed: the prefill's final layer) else T, and the new keys (H, T, Dh) as stored (rotated) and values
        (H, T, Dh)."""
        T, H = x.shape[0], self.h
        qkv = self.qkv(x).view(T, 3 * H, self.dh).transpose(0, 1)  # (3H, T, Dh)
        qk, v = qkv.split((2 * H, H))  # (2H, T, Dh), (H, T, Dh)
        qk_rot = qk * cos_f + (qk @ swap) * sin_f  # rope on q and k at once
        q_rot, k = qk_rot.split((H, H))  # (H, T, Dh) each
        q_raw = qk[:H]
        if last_n:
            q_raw, q_rot, mask = q_raw[:, -last_n:], q_rot[:, -last_n:], mask[-last_n:]
        scale = 1.0 / math.sqrt(self.dh)
        s = torch.cat(((q_raw @ pk) * scale,  # (H, T', P): unrotated, position-free prefix
                       (q_rot @ rk) * scale,  # (H, T', R)
                       (q_rot @ k.transpose(-1, -2)) * scale), dim=-1) + mask  # (H, T', T)
        att = torch.softmax(s, dim=-1)
        C = v_cache.shape[-2]
        y = att[..., :C] @ v_cache + att[..., C:] @ v  # (H, T', Dh)
        return self.proj(y.transpose(0, 1).reshape(y.shape[1], -1)), k, v


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2 / Gato)."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x, cos, sin, key_is_prefix, mask):
        x = x + self.attn(self.ln1(x), cos, sin, key_is_prefix, mask)
        return x + self.mlp(self.ln2(x))

    def forward_cached(self, x, cos_f, sin_f, swap, mask, pk, rk, v_cache, last_n: int = 0):
        a, k, v = self.attn.forward_cached(self.ln1(x), cos_f, sin_f, swap, mask, pk, rk, v_cache, last_n)
        x = (x[-last_n:] if last_n else x) + a
        return x + self.mlp(self.ln2(x)), k, v


def hl_gauss_nll(logits: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy of `logits` (..., bins) against a Gaussian of std `sigma` bins around each `target` bin (...)
    (HL-Gauss, Farebrother et al. 2024), per target."""
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    soft = torch.softmax(-0.5 * ((bins - target[..., None].float()) / sigma) ** 2, dim=-1)
    return -(soft * torch.log_softmax(logits, -1)).sum(-1)


def context_mask(valid, is_prefix, step, window: int) -> torch.Tensor:
    """(B, T, T) additive mask: causal; padding keys hidden; episode tokens see the prefix and the last `window`
    timesteps; prefix tokens see only the prefix. Every position sees itself (padding rows stay finite)."""
    T = valid.shape[-1]
    idx = torch.arange(T, device=valid.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T) key j <= query i
    q_step, k_step = step.unsqueeze(-1), step.unsqueeze(-2)  # (B, T, 1), (B, 1, T)
    in_window = (~is_prefix).unsqueeze(-1) & (q_step - k_step < window)
    allowed = causal & valid.unsqueeze(-2) & (is_prefix.unsqueeze(-2) | in_window)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)
    zero = torch.zeros((), dtype=torch.float32, device=valid.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), device=valid.device))


class GatoModel(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = GatoEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # Action-only head: logits over the action bins, evaluated only where an action is predicted.
        self.head = nn.Linear(cfg.d_model, cfg.tokenizer.num_bins)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * layers)
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))
        self.embed.patch.init_conditioning()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states (B, T, d) of whole contexts built by `gato_ros.sequence.ContextBuilder`."""
        x = self.embed(batch["tokens"], batch["patches"], batch["is_image"], batch["local_pos"], batch["row_bin"],
                       batch["col_bin"], batch["prefix_pos"], batch.get("text_feat"))
        x = self.drop(x)
        mask = context_mask(batch["valid"], batch["is_prefix"], batch["step"], self.cfg.window_steps)
        for blk in self.blocks:
            x = blk(x, batch["rope_cos"], batch["rope_sin"], batch["is_prefix"], mask)
        return self.ln_f(x)

    def forward(self, batch: dict[str, torch.Tensor], _loss: bool = False, label_sigma: float = 0.0,
                decision_weight: float = 1.0, goal_weight: float = 0.0):
        """Action logits (B, T, num_bins) at every position; with `_loss`, `loss(batch, label_sigma,
        decision_weight=..., goal_weight=...)` (so DistributedDataParallel, which synchronises gradients of
        `forward` only, can train through it)."""
        if _loss:
            return self.loss(batch, label_sigma, decision_weight=decision_weight, goal_weight=goal_weight)
        return self.head(self.hidden(batch))

    def add_goal_head(self) -> None:
        """Add the training-only goal head (`loss`'s goal_weight): a linear map from the hidden state to GOAL_BINS
        logits for each of the 4 goal coordinates (`gato_ros.model.data.episode_goal`). The exported graphs never
        use it; checkpoints keep its weights apart from the model's (`gato_ros.model.train`)."""
        from gato_ros.model.data import GOAL_BINS

        self.goal_head = nn.Linear(self.cfg.d_model, 4 * GOAL_BINS)
        self.last_losses: dict[str, torch.Tensor] = {}

    def loss(self, batch: dict[str, torch.Tensor], label_sigma: float = 0.0, bin_error: bool = False,
             decision_weight: float = 1.0, goal_weight: float = 0.0):
        """Mean cross-entropy over action targets and the number of targets (and, with `bin_error`, the summed
        |greedy bin - target bin|).

        `label_sigma` > 0 trains against a Gaussian over neighbouring bins (std in bins; HL-Gauss, Farebrother et
        al. 2024, "Stop Regressing") instead of Gato's one-hot target: the bins are ordinal, and a near miss then
        costs less than a far one, which speeds up learning; the greedy decode is unchanged.

        `decision_weight` w != 1: the targets of each episode's first timestep count w times in the (weighted) mean.
        There the arm is at rest and nothing is in the context, so only the image and the instruction can say where
        to go; later targets are mostly predictable from the motion so far and otherwise swamp that signal.

        `goal_weight` w > 0 (needs `add_goal_head` and a batch with the goal keys, `EpisodeSequences(goals=True)`):
        adds w times an auxiliary loss: from the hidden state that predicts each timestep's first action, the
        episode's goal positions (the target object's and the receptacle's xy, `episode_goal`), HL-Gauss over
        GOAL_BINS bins per coordinate (sigma 1 bin). Unlike an action, which says little about where the arm is
        going (a clipped step of a few degrees), these targets name the object, so the step-0 hidden state must
        find the named object in the image. The returned loss is the sum; `last_losses` keeps both parts."""
        h = self.hidden(batch)
        sel = batch["target"] >= 0
        logits = self.head(h[sel]).float()  # (n_targets, num_bins)
        tgt = batch["target"][sel]
        if label_sigma > 0:
            each = hl_gauss_nll(logits, tgt, label_sigma)
        else:
            each = F.cross_entropy(logits, tgt, reduction="none")
        if decision_weight != 1.0:
            w = torch.where(batch["step"][sel] == 0, float(decision_weight), 1.0)
            loss = (w * each).sum() / w.sum()
        else:
            loss = each.mean()
        if goal_weight > 0:
            goal = self._goal_loss(h, sel, batch)
            self.last_losses = {"action": loss.detach(), "goal": goal.detach()}
            loss = loss + goal_weight * goal
        n = tgt.new_tensor(tgt.numel())
        if bin_error:
            return loss, n, (logits.argmax(-1) - tgt).abs().sum()
        return loss, n

    def _goal_loss(self, h: torch.Tensor, sel: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean HL-Gauss cross-entropy of the goal head over the known goal coordinates, at the positions that
        predict each timestep's first action (the first of each run of action targets)."""
        first = sel & ~torch.roll(sel, 1, dims=1)
        rows = first.nonzero()[:, 0]  # each position's context
        logits = self.goal_head(h[first]).float().view(len(rows), 4, -1)
        known = batch["goal_mask"][rows].float()
        each = hl_gauss_nll(logits, batch["goal_bin"][rows], 1.0)  # (n, 4)
        return (each * known).sum() / known.sum().clamp(min=1.0)

    def forward_cached(self, tokens, patches, patch_row_bin, patch_col_bin, embed_index, local_pos, prefix_pos,
                       *rest):
        """One incremental call (T new tokens, N image patches among them, batch 1), the exported prefill (inputs as
        `GatoEmbedding.forward_compact`). `rest` is, in the order of
        `gato_ros.bundle.graph_inputs`: text_feat (F,) (only with instruction features), rope_cos/rope_sin (T, Dh)
        full-width tables, mask (T, P+R+T), then per layer the cache (prefix keys, ring keys, values).

        Returns logits (min(T, A), num_bins) of the last A = action_size new tokens (the separator and the action
        tokens of a tick, for parallel decoding) and the new keys/values, each (L, H, T, Dh)."""
        text_feat = None
        if self.cfg.instruction_features:
            text_feat, rest = rest[0], rest[1:]
        rope_cos, rope_sin, mask, *cache = rest
        x = self.embed.forward_compact(tokens, patches, patch_row_bin, patch_col_bin, embed_index, local_pos,
                                       prefix_pos, text_feat)
        return self._cached_blocks(x, rope_cos, rope_sin, mask, cache)

    def decode_cached(self, tokens, rope_cos, rope_sin, mask, *cache):
        """`forward_cached` for T action tokens: actions have no patch or position embeddings."""
        x = self.embed.token(tokens)  # (T, d)
        return self._cached_blocks(x, rope_cos, rope_sin, mask, cache)

    def _cached_blocks(self, x, cos_f, sin_f, mask, cache):
        dh = self.cfg.head_dim
        half = dh // 2
        # (Dh, Dh) permutation: (x @ swap) = [x2, x1]; with sin_f = [-sin, sin] this is rotate-half RoPE.
        swap = torch.roll(torch.eye(dh, dtype=x.dtype), half, dims=1)
        keys, values = [], []
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            pk, rk, v = cache[3 * i: 3 * i + 3]
            # The last layer only needs the outputs that predict actions (its K/V come from all tokens).
            x, k, v = blk.forward_cached(x, cos_f, sin_f, swap, mask, pk, rk, v,
                                         last_n=self.cfg.spec.action_size if i == n - 1 else 0)
            keys.append(k)
            values.append(v)
        logits = self.head(self.ln_f(x))  # (min(T, A), num_bins): action-only head on the last A tokens
        return logits, torch.stack(keys), torch.stack(values)  # (., nb), (L, H, T, Dh), (L, H, T, Dh)
