"""A prompt pair's positions and clean runs: the named position sets every patch is placed by,
and the harmful and benign (or corrupted) runs every intervention of a pair patches between."""

from __future__ import annotations

from ..datasets.prompts import EncodedPair
from ..patching.engine import MediationEngine
from ..patching.patches import NoisedRuns, Run


def base_prompt_len(pair: EncodedPair, kind: str) -> int:
    """Prompt length of the run an intervention patches: NIE patches the benign run (noise
    mode: the corrupted harmful run, which has the harmful tokens), NDE the harmful run."""
    if kind == "NDE" or pair.noise_span is not None:
        return len(pair.harmful_ids)
    return len(pair.benign_ids)


def position_sets(pair: EncodedPair, kind: str = "NIE") -> dict[str, tuple[int, ...]]:
    """Named position sets in the base run of ``kind``; post positions are right-aligned, so
    for unpaired prompts of different lengths they index the base's own template tokens.
    ``request`` is every position before them, where the request is read; it is empty when the
    two prompts differ in length, since their request tokens do not correspond one to one."""
    prompt_len = base_prompt_len(pair, kind)
    shift = prompt_len - len(pair.harmful_ids)
    post = tuple(q + shift for q in pair.post_positions)
    same_length = len(pair.harmful_ids) == len(pair.benign_ids) or pair.noise_span is not None
    return {
        "all": tuple(range(prompt_len)),
        "post": post,
        "last": (prompt_len - 1,),
        "request": tuple(q for q in range(prompt_len) if q not in post) if same_length else (),
    }


def joint_positions(pair: EncodedPair, kind: str = "NIE") -> tuple[str, tuple[int, ...]]:
    """The widest position set that is patched one-to-one: every prompt position when both runs
    have the same length (minimal pairs, noise), the post-instruction ones otherwise."""
    name = "all" if len(pair.harmful_ids) == len(pair.benign_ids) or pair.noise_span is not None else "post"
    return name, position_sets(pair, kind)[name]


def aligned_positions(pair: EncodedPair, kind: str = "NIE") -> range:
    """Base positions that have a right-aligned source position (every one for equal lengths)."""
    base = base_prompt_len(pair, kind)
    source = len(pair.harmful_ids) + len(pair.benign_ids) - base if pair.noise_span is None else base
    return range(max(0, base - source), base)


def clean_runs(engine: MediationEngine, pair: EncodedPair) -> tuple[Run, Run | NoisedRuns]:
    """The harmful run and the run that plays the benign role: the benign prompt's, or in
    noise mode the harmful prompt's corrupted runs (effects average over their draws)."""
    if pair.noise_span is not None:
        harmful = engine.run(pair.harmful_ids, pair.target_ids)
        corrupted = engine.noised_runs(pair.harmful_ids, pair.target_ids, pair.noise_span, pair.noise_scale,
                                       pair.noise_samples, pair.noise_seed)
        return harmful, corrupted
    harmful, benign = engine.runs([(pair.harmful_ids, pair.target_ids), (pair.benign_ids, pair.target_ids)])
    return harmful, benign
