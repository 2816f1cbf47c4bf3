"""Text detection: request parameters and the response, as the detection service answers and the gateway
passes them through unchanged."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.contracts.page_spec import PageSpec, parse_page_spec

LimitType = Literal["min", "max", "resize_long"]
BoxType = Literal["quad", "poly"]


class DetectParams(BaseModel):
    """Per-request overrides of the model's pre/post-processing settings (PaddleOCR's names and meanings)."""

    model_config = ConfigDict(extra="forbid")

    limit_side_len: int | None = Field(None, ge=32, le=4096,
                                       description="DetResizeForTest side limit (pixels; capped by max_side_limit)")
    limit_type: LimitType | None = None
    thresh: float | None = Field(None, ge=0.0, le=1.0, description="binarisation threshold of the prob map")
    box_thresh: float | None = Field(None, ge=0.0, le=1.0, description="minimum mean probability inside a box")
    unclip_ratio: float | None = Field(None, gt=0.0, le=10.0, description="how far boxes grow around the text")
    box_type: BoxType | None = None
    pages: str | None = Field(None, max_length=200, examples=["1-3,5", "2-"],
                              description="pages of each PDF/TIFF to detect on (from 1); default: all")
    dpi: int | None = Field(None, ge=18, le=1200, description="resolution PDF pages are rendered at (default 144)")
    model: str | None = Field(None, min_length=1, max_length=200,
                              description="which of the deployment's detection models (GET /models); default: its "
                                          "default model")
    previews: bool = Field(False, description="return each PDF/TIFF page as a JPEG data URL (longest side <= 1600) "
                                              "to draw its boxes on")

    @field_validator("pages")
    @classmethod
    def _strict_pages(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_page_spec(value))

    @property
    def page_spec(self) -> PageSpec | None:
        return None if self.pages is None else parse_page_spec(self.pages)


class DetectJSONRequest(BaseModel):
    """`POST /detect` as JSON: base64 images and optional params."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(..., min_length=1,
                              description="base64-encoded image, PDF or TIFF files (data: URLs allowed)")
    params: DetectParams = Field(default_factory=DetectParams)


class Box(BaseModel):
    # integers, as PaddleOCR's DBPostProcess returns them: boxes are mapped back to source pixels and rounded
    points: list[list[int]] = Field(..., description="[[x, y], ...] in source-image pixels; quads are tl,tr,br,bl")
    score: float


class ImageResult(BaseModel):
    source: int = Field(..., description="index of the upload in `images` this result is for")
    page: int | None = Field(None, description="page number (from 1) when the upload is a PDF or TIFF")
    width: int
    height: int
    preview: str | None = Field(None, description="the page as a JPEG data URL, when `previews` was asked for")
    boxes: list[Box]
    timing_ms: dict[str, float] = Field(default_factory=dict)


class DetectResponse(BaseModel):
    model: str
    precision: str = Field(..., description="the precision serving (fp32, bf16, fp16, int8); reduced ones passed "
                                            "the precision guard against fp32")
    results: list[ImageResult]


class DetectionModel(BaseModel):
    """One detection model a deployment loads, as `GET /v1/models` (detection) and `GET /models` (gateway) show it."""

    id: str = Field(..., description="the name a request's `model` field uses")
    served: str | None = Field(None, description="the model actually served (differs from `id` on a fallback)")
    display_name: str
    fallback: bool = False
    precision: str | None = Field(None, description="the precision its precision guard chose (fp32, bf16, fp16, int8)")
    engine: str | None = None
    default: bool = Field(False, description="what a request that names no model gets")
    ready: bool = False
    error: str | None = Field(None, description="why it failed to load, when it did")


class DetectionModelList(BaseModel):
    default: str
    models: list[DetectionModel]
