"""Run configuration: one dataclass per concept, nested in :class:`RunConfig`.

Every run saves its fully resolved config as ``config.json``, so a notebook that
opens a finished run sees exactly what produced it. Presets are named configs,
not code paths: ``paper`` is SPEC section 1 (the configuration of "Internalization
of gradients"), ``tiny`` is the same code path at CPU size, tuned so that
induction heads form within the default run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from interp_ext.errors import ConfigError

ACT_FNS = ("gelu", "relu", "gelu_new", "silu", "solu_ln")
NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre", None)
CORPORA = ("auto", "wikitext", "synthetic")


def _check(cond: bool, field_name: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}={value!r} is invalid: {fix}")


@dataclass
class ModelConfig:
    """Shape of the `HookedTransformer` (SPEC section 1)."""

    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    d_mlp: int = 512  # ignored when attn_only
    n_ctx: int = 64
    act_fn: str = "gelu"
    normalization_type: str | None = "LN"
    attn_only: bool = False
    # an imported run's full HookedTransformerConfig (architecture, rotary, eps, ...); the fields above
    # then only describe it. None for runs this package trains.
    hooked: dict[str, Any] | None = None

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "d_mlp", "n_ctx"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value > 0,
                f"model.{name}",
                value,
                "must be a positive integer",
            )
        _check(
            self.d_model % self.n_heads == 0,
            "model.n_heads",
            self.n_heads,
            f"must divide model.d_model={self.d_model} (d_head = d_model / n_heads)",
        )
        _check(self.act_fn in ACT_FNS, "model.act_fn", self.act_fn, f"choose one of {ACT_FNS}")
        _check(
            self.normalization_type in NORMALIZATIONS,
            "model.normalization_type",
            self.normalization_type,
            f"choose one of {NORMALIZATIONS}",
        )
        _check(
            self.n_ctx >= 8,
            "model.n_ctx",
            self.n_ctx,
            "must be at least 8 (probe sequences need room)",
        )


@dataclass
class DataConfig:
    """Corpus, tokenizer and the probe set (SPEC section 3).

    ``vocab_size=None`` keeps GPT-2's full 50,257-token vocabulary (the paper).
    An integer builds a compact BPE vocabulary from the corpus: GPT-2's 256 byte
    tokens, ``<|endoftext|>``, and the most frequent GPT-2 tokens of the corpus with
    their merge ancestors, merges restricted to it. Every text still encodes (no
    unknown token) and frequent words tokenize exactly as in GPT-2; on a CPU the
    50,257-wide unembedding otherwise dominates the cost.

    ``copy_prob`` mixes copied spans into the training stream: with that
    probability a sequence gets one span of ``copy_min_len..copy_max_len`` tokens
    copied from a random earlier position to a random later one. At random
    offsets and lengths, position alone cannot solve the copy, so an induction
    head is the cheapest solution.
    """

    corpus: str = "auto"  # auto: WikiText-2 if data_dir or the hub gives it, else synthetic
    data_dir: str | None = None  # holds wiki.{train,valid,test}.raw
    vocab_size: int | None = None
    copy_prob: float = 0.0
    copy_min_len: int = 6
    copy_max_len: int = 24
    copy_source: str = (
        "text"  # text: copy a span of the sequence; random: a random-token span, then its copy
    )
    random_seq_prob: float = (
        0.0  # share of sequences made of uniform random tokens instead of corpus text
    )
    data_seed: int = 0  # probe set and synthetic corpus
    probe_batches: int = 64  # B, batches that build G
    heldout_batches: int = 16  # batches not used to build G
    probe_batch_size: int = 8
    repeated_batches: int = 4  # [BOS] r r sequences for induction tests
    synthetic_tokens: int = 400_000

    def __post_init__(self) -> None:
        _check(self.corpus in CORPORA, "data.corpus", self.corpus, f"choose one of {CORPORA}")
        if self.vocab_size is not None:
            _check(
                isinstance(self.vocab_size, int) and 300 <= self.vocab_size <= 50257,
                "data.vocab_size",
                self.vocab_size,
                "use None for GPT-2's full vocabulary or an integer in [300, 50257] (it holds 257 byte/special tokens)",
            )
        _check(
            0.0 <= self.random_seq_prob <= 1.0,
            "data.random_seq_prob",
            self.random_seq_prob,
            "must be a probability in [0, 1]",
        )
        _check(
            0.0 <= self.copy_prob <= 1.0,
            "data.copy_prob",
            self.copy_prob,
            "must be a probability in [0, 1]",
        )
        _check(
            self.copy_source in ("text", "random"),
            "data.copy_source",
            self.copy_source,
            "choose 'text' or 'random'",
        )
        _check(
            1 <= self.copy_min_len <= self.copy_max_len,
            "data.copy_min_len",
            self.copy_min_len,
            "need 1 <= copy_min_len <= copy_max_len",
        )
        for name in (
            "probe_batches",
            "heldout_batches",
            "probe_batch_size",
            "repeated_batches",
            "synthetic_tokens",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value > 0,
                f"data.{name}",
                value,
                "must be a positive integer",
            )


@dataclass
class TrainConfig:
    """Optimisation and checkpointing (SPEC sections 1 and 3)."""

    steps: int = 100_000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    n_seeds: int = 16
    first_seed: int = 0  # seeds are first_seed .. first_seed + n_seeds - 1
    seed_list: tuple[int, ...] = ()  # other seeds than that range (a branch of some seeds of a run)
    checkpoint_every: int = 1_000
    bf16: bool = True  # bfloat16 autocast for training; every measurement is float32
    device: str = "cpu"
    seed_chunk: int = 0  # seeds per forward/backward; 0: automatic (all in one vmap on a GPU, one at a time on a CPU)
    fused_adamw: bool = True  # torch.optim.AdamW(fused=True) on CPU/CUDA: one pass per tensor; False: torch's per-op default
    # torch.use_deterministic_algorithms during training, recording and replay: a repeat of the run (same
    # thread count, same device type) is equal bit for bit; off, CPU embedding backward sums in thread order
    deterministic: bool = True

    @property
    def seeds(self) -> list[int]:
        if self.seed_list:
            return list(self.seed_list)
        return list(range(self.first_seed, self.first_seed + self.n_seeds))

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.seed_list = tuple(self.seed_list)  # type: ignore[assignment]
        _check(
            not self.seed_list
            or (len(self.seed_list) == self.n_seeds and len(set(self.seed_list)) == self.n_seeds),
            "train.seed_list",
            self.seed_list,
            f"must hold train.n_seeds={self.n_seeds} distinct seeds (or be empty)",
        )
        _check(
            isinstance(self.steps, int) and self.steps >= 0,
            "train.steps",
            self.steps,
            "must be a non-negative integer",
        )
        _check(
            isinstance(self.batch_size, int) and self.batch_size > 0,
            "train.batch_size",
            self.batch_size,
            "must be a positive integer",
        )
        _check(self.lr > 0, "train.lr", self.lr, "must be positive")
        _check(
            self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be non-negative"
        )
        _check(
            isinstance(self.n_seeds, int) and self.n_seeds > 0,
            "train.n_seeds",
            self.n_seeds,
            "must be a positive integer",
        )
        _check(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every > 0,
            "train.checkpoint_every",
            self.checkpoint_every,
            "must be a positive integer",
        )
        _check(
            self.steps == 0 or self.checkpoint_every <= self.steps,
            "train.checkpoint_every",
            self.checkpoint_every,
            f"must not exceed train.steps={self.steps}, or no checkpoint after step 0 would be written",
        )
        _check(
            isinstance(self.seed_chunk, int) and self.seed_chunk >= 0,
            "train.seed_chunk",
            self.seed_chunk,
            "must be >= 0 (0 = automatic: all seeds in one vmap on a GPU, one at a time on a CPU)",
        )
        _check(
            self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps",
            "train.device",
            self.device,
            "use 'cpu', 'cuda' or 'cuda:N'",
        )


@dataclass
class RecordConfig:
    """Hook-based activation recording (SPEC section 3).

    At every checkpoint the first ``n_batches`` probe batches (``probe`` names the
    set: ``lm`` or ``repeated``) are run with the named TransformerLens hooks and
    the activations saved. Names ending in ``_grad`` record backward hooks on the
    LM loss. ``every`` > 0 also records every that many training steps;
    ``max_bytes`` bounds one recording (the run refuses to start beyond it).
    """

    hooks: list[str] = field(default_factory=list)
    probe: Literal["lm", "repeated"] = "lm"
    n_batches: int = 4
    every: int = 0
    max_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        self.hooks = list(self.hooks)
        _check(
            self.probe in ("lm", "repeated"),
            "record.probe",
            self.probe,
            "choose 'lm' or 'repeated'",
        )
        _check(
            isinstance(self.n_batches, int) and self.n_batches > 0,
            "record.n_batches",
            self.n_batches,
            "must be a positive integer",
        )
        _check(
            isinstance(self.every, int) and self.every >= 0,
            "record.every",
            self.every,
            "must be >= 0 (0 records only at checkpoints)",
        )
        _check(self.max_bytes > 0, "record.max_bytes", self.max_bytes, "must be positive")


def _paper_plan() -> dict[str, dict[str, Any]]:
    return {
        "induction": {},
        "circuit": {},
        "patching": {},
        "geometry": {"k": 4, "lag": 10},
        "stream2": {},
        "beta": {},
        "autocatalysis": {"rows": 32, "controls": 3},
        "sae": {"hook": "blocks.1.hook_resid_post", "width": 512},
    }


# ``interp-ext study``: the circuit by cause, the exact work ledger on every seed (formed seeds
# over their window, unformed ones over the median window as the null), its replays toward the
# gradient flow (the last 500 steps before formation and the rise, at lr, lr / 2 and lr / 4 with
# 1, 2 and 4 steps per real batch, every other setting the same). A key "name:tag" is a second
# entry of the family "name".
STUDY_PLAN: dict[str, dict[str, Any]] = {
    "induction": {},
    "circuit": {},
    # who reinforces whom (results 3.6): S and N at two probe sizes and the saddle signature at
    # every checkpoint on the raw weights (the growth law reads S_C); then the member matrix in
    # the decision's deciding phase on the slow weights (Polyak averages over 50 and 200 steps)
    # beside the raw ones
    "members": {"probe_sizes": "8,32", "weights": "raw", "modes": 3, "matrix": False},
    "members:slow": {
        "probe_sizes": "8",
        "weights": "raw,polyak50,polyak200",
        "modes": 0,
        "near": "before",
    },
    # the saddle signature at the real steps between checkpoints through each formed seed's
    # window (replayed bit for bit), and the growth law's series on the slow weights
    "members:window": {
        "probe_sizes": "8",
        "weights": "raw",
        "modes": 3,
        "matrix": False,
        "near": "before",
        "window": "auto",
        "window_every": 50,
    },
    "members:growth": {"probe_sizes": "8", "weights": "polyak200", "modes": 0, "matrix": False},
    "work": {"every": 10},
    # toward the gradient flow: the same span (window start to the rise's end) replayed at lr / k,
    # k in 1, 2, 4, every other setting the same (a replay turns one knob): every 25th real step
    # measured on all k of its sub-steps, M = 8 fresh batches per real step (M / k per sub-step)
    **{
        f"work:lr/{k}": {
            "scale": k,
            "until": "rise",
            "nulls": False,
            "every": 25,
            "detail_every": 50,
            "drift_batches": 8,
        }
        for k in (1, 2, 4)
    },
}


@dataclass
class MeasureConfig:
    """What ``interp-ext reproduce`` measures after training, saved with the run.

    ``plan`` maps a measurement family to its settings (overrides of the family's
    defaults; see ``interp-ext measure FAMILY --help``), measured in this order;
    ``every`` measures a family at every n-th checkpoint only (the last one
    always included). ``study_plan`` and ``study_seeds`` do the same for
    ``interp-ext study``. The settings are validated by the families themselves
    (:func:`interp_ext.pipeline.plan_settings`) before any training starts.
    """

    plan: dict[str, dict[str, Any]] = field(default_factory=_paper_plan)
    every: dict[str, int] = field(default_factory=lambda: {"autocatalysis": 5, "sae": 10})
    # ``interp-ext study``: seeds trained and the families measured (Stream 3 decided, SPEC section 6)
    study_seeds: int = 8
    study_plan: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(STUDY_PLAN))
    # the first n seeds whose induction heads formed (a family not named: every seed)
    study_family_seeds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plan = {str(k): dict(v) for k, v in self.plan.items()}
        self.study_plan = {str(k): dict(v) for k, v in self.study_plan.items()}
        _check(
            isinstance(self.study_seeds, int) and self.study_seeds >= 1,
            "measure.study_seeds",
            self.study_seeds,
            "must be a positive integer",
        )
        for name, n in self.study_family_seeds.items():
            _check(
                isinstance(n, int) and n >= 1,
                f"measure.study_family_seeds[{name!r}]",
                n,
                "must be a positive integer",
            )
        for name, n in self.every.items():
            _check(
                isinstance(n, int) and n >= 1,
                f"measure.every[{name!r}]",
                n,
                "must be a positive integer (1 = every checkpoint)",
            )
            _check(
                name in self.plan,
                f"measure.every[{name!r}]",
                n,
                f"names a family that is not in measure.plan {sorted(self.plan)}",
            )


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json``."""

    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def payload(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``config.json`` holds: the config and, as ``provenance``, ``extra``
        (written by the run package, :func:`interp_ext.diskio.write_json`)."""
        payload = self.to_dict()
        if extra:
            payload["provenance"] = extra
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunConfig:
        sections = {
            "model": ModelConfig,
            "data": DataConfig,
            "train": TrainConfig,
            "record": RecordConfig,
            "measure": MeasureConfig,
        }
        kwargs: dict[str, Any] = {"preset": payload.get("preset", "custom")}
        for name, klass in sections.items():
            values = dict(payload.get(name, {}))
            if name == "train" and values and "deterministic" not in values:
                values["deterministic"] = (
                    False  # saved before the setting existed: trained without it
                )
            kwargs[name] = _build(klass, values, name)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config saved in ``path``; an unreadable file is a one-line :class:`ConfigError`."""
        try:
            payload = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"{path} is not valid JSON ({err}); restore it, or make the run again"
            ) from err
        if not isinstance(payload, dict):
            raise ConfigError(f"{path} holds no config (a JSON object was expected)")
        try:
            return cls.from_dict(payload)
        except TypeError as err:
            raise ConfigError(f"{path}: {err}") from err


def _build(klass: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(section + '.' + u for u in unknown)}; valid fields: {sorted(known)}"
        )
    return klass(**values)


def paper_preset() -> RunConfig:
    """SPEC section 1, exactly."""
    return RunConfig(preset="paper")


def tiny_preset() -> RunConfig:
    """A CPU-sized run on which induction heads form within the run on most seeds (both tuning
    seeds; 5 of 8 in the WikiText-2 study, docs/results.md).

    2 attention-only layers (with LayerNorm) x 4 heads, d_model 64, context 64,
    a compact 512-token vocabulary, batch 32, AdamW 2e-3, 4,000 steps,
    checkpoints every 250. Data mix: 25% of the training sequences are corpus
    text, 75% uniform random tokens (``random_seq_prob=0.75``); every sequence
    carries one random-token span of 12-31 tokens copied to a later random
    offset (``copy_prob=1``, ``copy_source="random"``). Only induction predicts
    the copy, and on mostly-text data (50% text or more) the heads did not form
    within the run; measurements behind these numbers are in docs/tiny_preset.md.
    """
    return RunConfig(
        preset="tiny",
        model=ModelConfig(n_layers=2, n_heads=4, d_model=64, d_mlp=256, n_ctx=64, attn_only=True),
        data=DataConfig(
            vocab_size=512,
            copy_prob=1.0,
            copy_min_len=12,
            copy_max_len=31,
            copy_source="random",
            random_seq_prob=0.75,
            probe_batches=16,
            heldout_batches=4,
            probe_batch_size=8,
            repeated_batches=2,
        ),
        train=TrainConfig(
            steps=4000,
            batch_size=32,
            lr=2e-3,
            weight_decay=0.01,
            n_seeds=2,
            checkpoint_every=250,
            bf16=False,
        ),
        record=RecordConfig(hooks=[], n_batches=2),
        measure=MeasureConfig(
            plan={
                "induction": {},
                "circuit": {},
                "patching": {},
                "geometry": {"k": 4, "lag": 4},
                "stream2": {},
                "beta": {},
                "autocatalysis": {"rows": 8, "controls": 2},
                "sae": {"hook": "blocks.0.hook_resid_post", "width": 128},
            },
            every={"autocatalysis": 2, "sae": 2},
        ),
    )


def tiny_mlp_preset() -> RunConfig:
    """The tiny preset with the paper's block: attention and an MLP (GELU, d_mlp 128) per layer, LayerNorm.

    Same data mix, vocabulary and probe set as ``tiny``, learning rate 3e-3 and 7,000 steps;
    tuned so induction heads form on every seed within the run (docs/tiny_preset.md, "The MLP
    preset"). ``interp-ext study`` trains 4 seeds and measures induction, the circuit and the
    exact work ledger.
    """
    cfg = tiny_preset()
    cfg.preset = "tiny_mlp"
    cfg.model = ModelConfig(n_layers=2, n_heads=4, d_model=64, d_mlp=128, n_ctx=64, attn_only=False)
    cfg.train.steps = 7000
    cfg.train.lr = 3e-3
    cfg.measure.study_seeds = 4
    cfg.measure.study_plan = {"induction": {}, "circuit": {}, "work": {"every": 10}}
    cfg.measure.study_family_seeds = {}
    cfg.measure.plan["sae"] = {"hook": "blocks.0.hook_resid_post", "width": 128}
    return cfg


PRESETS = {"paper": paper_preset, "tiny": tiny_preset, "tiny_mlp": tiny_mlp_preset}


def get_preset(name: str) -> RunConfig:
    """Return a fresh copy of the named preset."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def override(config: RunConfig, **changes: Any) -> RunConfig:
    """Return a copy with ``section__field=value`` changes applied and re-validated.

    Example: ``override(cfg, train__steps=200, record__hooks=["blocks.0.hook_resid_post"])``.
    """
    payload = config.to_dict()
    for key, value in changes.items():
        if value is None:
            continue
        if "__" not in key:
            raise ConfigError(
                f"override key {key!r} must look like section__field, e.g. train__steps"
            )
        section, name = key.split("__", 1)
        if section not in payload or not isinstance(payload[section], dict):
            raise ConfigError(
                f"unknown config section {section!r}; valid: model, data, train, record, measure"
            )
        payload[section][name] = value
    return RunConfig.from_dict(payload)


__all__ = [
    "ConfigError",
    "DataConfig",
    "MeasureConfig",
    "ModelConfig",
    "PRESETS",
    "RecordConfig",
    "RunConfig",
    "TrainConfig",
    "get_preset",
    "override",
    "paper_preset",
    "tiny_mlp_preset",
    "tiny_preset",
]
