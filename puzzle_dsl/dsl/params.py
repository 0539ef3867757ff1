"""params.yaml as typed schemas: what `run_stage` validates and hands to a stage program.

A section the recipe writes as it is (BLD's `bld.common`, `gkd`, `runtime` = Scenario, the
corpus sources, tasks) uses the recipe's own class. The sections the compiler resolves
against the parent's shape are modelled here in their compiled form: the space (variant
names -> specs with their layers), the corpus budgets, the search (objective, throughput
target, fixed layers, baseline plans). Variants, sources and baselines are discriminated
unions on `kind`. No torch here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, model_serializer

from puzzle_dsl.dsl.gguf_types import GGUF_TYPES
from puzzle_dsl.dsl.recipe import (
    GKD,
    Benchmark,
    BldCommon,
    Calibrate,
    Evaluation,
    Generated,
    HFDataset,
    JsonlFile,
    Parent,
    ParquetFile,
    Scenario,
    Scoring,
    SearchLimits,
    SeqLen,
    TextFile,
)
from puzzle_dsl.dsl.schema import Int, Num, Schema

__all__ = ["Benchmark", "Calibrate", "Params", "SearchParams", "SpaceParams"]

Name = Annotated[str, Field(min_length=1)]
Layers = tuple[Int(ge=0), ...]


# ---------------------------------------------------------------------------- corpus
class SplitTokens(Schema):
    """Token budget of each corpus split."""

    train: Int(ge=1)
    score: Int(ge=1)
    valid: Int(ge=1)


SourceParams = Annotated[Union[Generated, TextFile, JsonlFile, ParquetFile, HFDataset],  # noqa: UP007
                         Field(discriminator="kind")]


class CorpusParams(Schema):
    """params.yaml `corpus`."""

    seq_len: SeqLen
    seed: Int(ge=0) = 0
    tokens: SplitTokens
    sources: Annotated[tuple[SourceParams, ...], Field(min_length=1)]


# ---------------------------------------------------------------------------- space
class GqaSpec(Schema):
    kind: Literal["gqa"]
    n_heads_in_group: Int(ge=1)
    layers: Layers


class SwigluSpec(Schema):
    kind: Literal["swiglu"]
    intermediate_size: Int(ge=1)
    layers: Layers


class LinearSpec(Schema):
    kind: Literal["linear"]
    layers: Layers


class NoOpSpec(Schema):
    kind: Literal["no_op"]
    layers: Layers


AttentionSpec = Annotated[Union[GqaSpec, LinearSpec, NoOpSpec], Field(discriminator="kind")]  # noqa: UP007
FfnSpec = Annotated[Union[SwigluSpec, LinearSpec, NoOpSpec], Field(discriminator="kind")]  # noqa: UP007


class SpaceParams(Schema):
    """params.yaml `space`: variant name -> spec per subblock (a stage may get only some)."""

    attention: dict[str, AttentionSpec] = Field(default_factory=dict)
    ffn: dict[str, FfnSpec] = Field(default_factory=dict)

    def specs(self) -> dict[str, dict[str, dict]]:
        """The space as plain spec dicts (what the block builders take)."""
        return self.section()

    def variant(self, name: str) -> tuple[str, dict]:
        """(subblock, spec dict) of variant `name`."""
        for subblock, specs in self.specs().items():
            if name in specs:
                return subblock, specs[name]
        raise ValueError(f"variant {name!r} is not in space.attention or space.ffn of "
                         "params.yaml: recompile the recipe")


# ---------------------------------------------------------------------------- search
class ThroughputTarget(Schema):
    """`search.throughput`: `relative` (a multiple of the parent's measured throughput) or
    `absolute` (generated tokens/s); exactly one."""

    relative: Num(gt=0.0) | None = None
    absolute: Num(gt=0.0) | None = None

    def _check(self) -> None:
        if (self.relative is None) == (self.absolute is None):
            self.fail("give exactly one of relative and absolute")

    @model_serializer(mode="wrap")
    def _given(self, handler) -> dict:  # the one target given, as params.yaml writes it
        return {k: v for k, v in handler(self).items() if v is not None}


class LayerPick(Schema):
    """The variant names one layer takes."""

    attention: Name
    ffn: Name


class UniformWidthPlan(Schema):
    """A uniform-width baseline: the GQA x SwiGLU pairs it may choose from."""

    kind: Literal["uniform_width"]
    name: Name
    parent: LayerPick
    candidates: tuple[tuple[Name, Name], ...]


class DepthPruningPlan(Schema):
    """A depth-pruning baseline: the no-op pair that replaces a dropped layer."""

    kind: Literal["depth_pruning"]
    name: Name
    parent: LayerPick
    drop: LayerPick


BaselinePlan = Annotated[Union[UniformWidthPlan, DepthPruningPlan], Field(discriminator="kind")]  # noqa: UP007


class SearchParams(SearchLimits):
    """params.yaml `search`: the recipe's limits plus the compiled objective, target, fixed
    architecture (one LayerPick per layer) and baseline plans."""

    objective: Literal["kl", "lm_loss", "accuracy"]
    throughput: ThroughputTarget | None = None
    fixed: tuple[LayerPick, ...] | None = None
    baselines: tuple[BaselinePlan, ...] = ()


# ---------------------------------------------------------------------------- the file
class RecipeName(Schema):
    name: Name


class BldRun(BldCommon):
    """params.yaml `bld.common` as the stage reads it: the recipe's BLD settings plus two run
    knobs that compile leaves at their defaults (set them with `dvc exp run -S`)."""

    checkpoint_every: Int(ge=0) = 200  # steps between resume checkpoints (0: none)
    device: str = "auto"  # auto: cuda when present, else cpu


class BldParams(Schema):
    common: BldRun


class ScoreParams(Schema):
    common: Scoring


class Report(Schema):
    children: tuple[Name, ...]


class Export(Schema):
    register_name: Name
    gguf: Literal[GGUF_TYPES] | None = "f16"


class Params(Schema):
    """The whole params.yaml; a stage gets the sections it declares, the others are None.
    Sections of a project's own stages (unknown here) pass through as plain data."""

    model_config = ConfigDict(**Schema.model_config) | ConfigDict(extra="allow")

    recipe: RecipeName | None = None
    parent: Parent | None = None
    corpus: CorpusParams | None = None
    space: SpaceParams | None = None
    calibrate: Calibrate | None = None
    bld: BldParams | None = None
    score: ScoreParams | None = None
    runtime: Scenario | None = None
    search: SearchParams | None = None
    gkd: GKD | None = None
    evaluate: Evaluation | None = None
    benchmark: Benchmark | None = None
    report: Report | None = None
    export: Export | None = None

    @classmethod
    def read(cls, params: Any) -> Params:
        """Validate params.yaml content (or a stage's part of it) into typed sections."""
        return cls.from_params(params, "")

    def __getitem__(self, section: str) -> Any:
        """`params["make"]`: a section by name (typed when it is one of the recipe's)."""
        return getattr(self, section)
