"""The precision guard: a reduced-precision engine (bf16, fp16, int8; OpenVINO, ONNX Runtime, TensorRT, torch)
serves only after it ran beside the fp32 engine over the validation set and kept

  - its hmean against the ground truth >= fp32's hmean - ``max_hmean_drop``, and
  - >= ``min_match_rate`` of fp32's boxes matched (one-to-one, IoU >= 0.5).

Engine-agnostic: it sees engines only through ``Engine.infer``, so the CPU and GPU paths share it. Which
precisions are tried, and in what order, is ``select_precision``'s policy; every attempt is a ``Trial`` that
/readyz shows, with the reason it was accepted or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from .engines.base import Engine
from .evaluation import box_match_rate, detection_score
from .postprocess import DBPostProcessor
from .preprocess import NormalizeConfig, ResizeConfig, preprocess
from .textset import TextSample

log = logging.getLogger(__name__)

CHAIN = ("int8", "fp16", "bf16", "fp32")  # an explicit request falls back along this chain


@dataclass(frozen=True)
class GuardLimits:
    max_hmean_drop: float = 0.005
    min_match_rate: float = 0.98
    min_iou: float = 0.5


@dataclass(frozen=True)
class ValidationRun:
    boxes: list[list[np.ndarray]]  # per validation image
    hmean: float  # over the images with ground truth
    images_per_s: float  # at batch 1, shapes already seen (a second pass over the first ``timing_images``)


class Trial(BaseModel):
    """One precision the guard tried (shown by /readyz)."""

    precision: str
    engine: str
    accepted: bool
    reason: str
    hmean: float | None = None
    match_rate: float | None = None
    images_per_s: float | None = None
    build: dict | None = None  # e.g. quantization: method, seconds, cache_hit


@dataclass
class Candidate:
    """A reduced-precision engine to try. ``build`` returns it loaded, with details for /readyz; it may raise
    (a failed quantization, a missing CPU feature), which only rules this candidate out."""

    precision: str
    label: str
    build: Callable[[], tuple[Engine, dict]]
    # the label of a cheaper-to-build candidate that is at least as fast as this one (e.g. plain NNCF int8 for its
    # accuracy-controlled build, which puts some layers back in float): under `auto` this one is built last, and
    # not at all when that one passed, or ran no faster than what already passed
    bounded_by: str | None = None


@dataclass
class Selection:
    engine: Engine
    precision: str
    label: str
    trials: list[Trial]
    reason: str
    seconds: float
    guard: dict[str, object] | None = None  # whether the verdict came from the cache, and when it was measured


# ----------------------------------------------------------------------------------------------- measuring


class Validator:
    """Runs an engine over the validation images, preprocessed and post-processed exactly as serving does."""

    def __init__(self, samples: Sequence[TextSample], resize: ResizeConfig, normalize: NormalizeConfig,
                 postprocessor: DBPostProcessor, pad_to: Callable[[int, int], tuple[int, int]] | None = None,
                 timing_images: int = 6) -> None:
        if not samples:
            raise ValueError("the guard needs at least one validation image")
        self.samples = list(samples)
        self.tensors = [preprocess(s.image, resize, normalize)[None] for s in self.samples]
        self.postprocessor = postprocessor
        self.pad_to = pad_to  # padded buckets: the engine sees what the batcher would give it
        self.timing_images = timing_images

    def _map(self, engine: Engine, tensor: np.ndarray) -> np.ndarray:
        _, _, h, w = tensor.shape
        if self.pad_to is not None:
            ph, pw = self.pad_to(h, w)
            if (ph, pw) != (h, w):
                padded = np.zeros((1, 3, ph, pw), dtype=np.float32)
                padded[:, :, :h, :w] = tensor
                return engine.infer(padded)[0, :h, :w]
        return engine.infer(tensor)[0]

    def run(self, engine: Engine) -> ValidationRun:
        boxes = [[b.points for b in self.postprocessor(self._map(engine, t), s.image.shape[:2])]
                 for s, t in zip(self.samples, self.tensors)]
        with_truth = [i for i, s in enumerate(self.samples) if s.has_truth]
        score = detection_score([boxes[i] for i in with_truth], [self.samples[i].polygons for i in with_truth])
        return ValidationRun(boxes, score.hmean, self.images_per_s(engine))

    def images_per_s(self, engine: Engine) -> float:
        """Batch-1 throughput over the first ``timing_images`` images (already seen once: shapes compiled), with
        as many calls side by side as the engine serves with (``engine.parallel``)."""
        timed = self.tensors[: self.timing_images]
        started = time.perf_counter()
        if engine.parallel > 1:
            with ThreadPoolExecutor(engine.parallel) as pool:
                list(pool.map(lambda t: self._map(engine, t), timed))
        else:
            for tensor in timed:
                self._map(engine, tensor)
        return len(timed) / max(time.perf_counter() - started, 1e-9)

    def race(self, candidate: Engine, reference: Engine, rounds: int = 3) -> tuple[float, float]:
        """Best-of-``rounds`` images/s of both, timed in alternation, so a busy moment on a shared machine does
        not decide which engine serves."""
        best_c = best_r = 0.0
        for _ in range(rounds):
            best_c = max(best_c, self.images_per_s(candidate))
            best_r = max(best_r, self.images_per_s(reference))
        return best_c, best_r


def judge(reference: ValidationRun, candidate: ValidationRun, limits: GuardLimits) -> tuple[bool, float, str]:
    """(accepted, match rate, why): the two rules, against the fp32 run."""
    match = box_match_rate(candidate.boxes, reference.boxes, limits.min_iou)
    floor = reference.hmean - limits.max_hmean_drop
    problems = []
    if candidate.hmean < floor - 1e-12:
        problems.append(f"hmean {candidate.hmean:.4f} < fp32's {reference.hmean:.4f} - {limits.max_hmean_drop}")
    if match < limits.min_match_rate:
        problems.append(f"matched {match:.1%} of fp32's boxes < {limits.min_match_rate:.0%}")
    if problems:
        return False, match, "rejected: " + "; ".join(problems)
    return True, match, f"passed: hmean {candidate.hmean:.4f} (fp32 {reference.hmean:.4f}), matched {match:.1%}"


# ----------------------------------------------------------------------------------------------- choosing


def _rounded(value: float) -> float:
    return round(float(value), 4)


def select_precision(requested: str, reference: Engine, reference_label: str, candidates: Sequence[Candidate],
                     validator_factory: Callable[[], Validator], limits: GuardLimits) -> Selection:
    """Pick the engine to serve.

    ``fp32``: the reference, unguarded (it *is* the yardstick). ``auto``: every candidate is tried; the fastest
    of those that pass and fp32 serves. ``int8``/``fp16``/``bf16``: candidates from the requested precision down
    the chain int8 -> fp16 -> bf16 -> fp32; the first that passes serves. Whatever goes wrong (no validation set,
    a failed build) ends in fp32, never in an unguarded reduced engine."""
    started = time.perf_counter()
    if requested == "fp32":
        trial = Trial(precision="fp32", engine=reference_label, accepted=True,
                      reason="fp32 requested: exact, no guard needed")
        return Selection(reference, "fp32", reference_label, [trial], trial.reason, 0.0)
    if requested != "auto" and requested not in CHAIN:
        raise ValueError(f"precision must be auto or one of {CHAIN}, not {requested!r}")

    try:
        validator = validator_factory()
        ref_run = validator.run(reference)
    except Exception as exc:
        reason = f"the guard could not run ({type(exc).__name__}: {exc}); serving fp32"
        log.warning("precision guard: %s", reason)
        trial = Trial(precision="fp32", engine=reference_label, accepted=True, reason=reason)
        return Selection(reference, "fp32", reference_label, [trial], reason, time.perf_counter() - started)

    trials = [Trial(precision="fp32", engine=reference_label, accepted=True, reason="the reference",
                    hmean=_rounded(ref_run.hmean), match_rate=1.0, images_per_s=_rounded(ref_run.images_per_s))]
    wanted = CHAIN if requested == "auto" else CHAIN[CHAIN.index(requested):]
    ordered = sorted((c for c in candidates if c.precision in wanted), key=lambda c: (
        requested == "auto" and c.bounded_by is not None, wanted.index(c.precision)))
    if requested not in ("auto", "fp32") and not any(c.precision == requested for c in ordered):
        trials.append(Trial(precision=requested, engine="-", accepted=False,
                            reason=f"no {requested} engine for this model on this device"))
    best: tuple[Engine, Candidate, float] | None = None
    ref_best = ref_run.images_per_s
    for candidate in ordered:
        if best is not None and requested != "auto":
            break
        if requested == "auto" and (skip := _cannot_pay_off(candidate, trials, ref_best)):
            trials.append(Trial(precision=candidate.precision, engine=candidate.label, accepted=False, reason=skip))
            log.info("precision guard: %s (%s) %s", candidate.label, candidate.precision, skip)
            continue
        engine = None
        try:
            engine, details = candidate.build()
            run = validator.run(engine)
        except Exception as exc:
            log.warning("precision guard: %s (%s) failed: %s", candidate.label, candidate.precision, exc,
                        exc_info=True)
            trials.append(Trial(precision=candidate.precision, engine=candidate.label, accepted=False,
                                reason=f"failed: {type(exc).__name__}: {exc}"[:500]))
            if engine is not None:
                engine.close()
            continue
        accepted, match, why = judge(ref_run, run, limits)
        speed = run.images_per_s
        if accepted:
            speed, ref_speed = validator.race(engine, reference)
            ref_best = max(ref_best, ref_speed)
        trials.append(Trial(precision=candidate.precision, engine=candidate.label, accepted=accepted, reason=why,
                            hmean=_rounded(run.hmean), match_rate=_rounded(match),
                            images_per_s=_rounded(speed), build=details or None))
        log.info("precision guard: %s (%s) %s; %.2f images/s (fp32 %.2f)", candidate.label, candidate.precision,
                 why, speed, ref_best)
        if accepted and (best is None or speed > best[2]):
            if best is not None:
                best[0].close()
            best = (engine, candidate, speed)
        else:
            engine.close()

    trials[0] = trials[0].model_copy(update={"images_per_s": _rounded(ref_best)})
    if best is not None and (requested != "auto" or best[2] > ref_best):
        engine, candidate, _ = best
        reference.close()
        chosen = candidate.precision, candidate.label
    else:
        if best is not None:
            best[0].close()
        engine, chosen = reference, ("fp32", reference_label)
    reason = _summary(requested, chosen, trials)
    (log.warning if requested not in ("auto", chosen[0]) else log.info)("precision guard: %s", reason)
    return Selection(engine, chosen[0], chosen[1], trials, reason, time.perf_counter() - started)


def _cannot_pay_off(candidate: Candidate, trials: Sequence[Trial], ref_best: float) -> str | None:
    """Why building ``candidate`` cannot win under `auto` (its bound already passed, or ran no faster than the
    fastest engine that passed), or None."""
    bound = next((t for t in trials if t.engine == candidate.bounded_by and t.images_per_s is not None), None)
    if bound is None:
        return None
    if bound.accepted:
        return f"not built: {bound.engine}, at least as fast, passed"
    fastest = max([ref_best, *(t.images_per_s or 0.0 for t in trials[1:] if t.accepted)])
    if bound.images_per_s <= fastest:
        return (f"not built: it runs no faster than {bound.engine} ({bound.images_per_s:.2f} images/s), which is "
                f"no faster than the fastest that passed ({fastest:.2f} images/s)")
    return None


def _summary(requested: str, chosen: tuple[str, str], trials: Sequence[Trial]) -> str:
    rejected = [f"{t.engine} {t.precision} {t.reason}" for t in trials[1:] if not t.accepted]
    head = f"serving {chosen[0]} ({chosen[1]})"
    if requested == "auto":
        head += ": the fastest that passed the guard"
    elif requested != chosen[0]:
        head += f" instead of the requested {requested}"
    return head + (f"; not served: {' | '.join(rejected)}" if rejected else "")
