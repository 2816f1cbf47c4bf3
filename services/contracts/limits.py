"""Upload limits, read by the gateway and by the detection service from the same variables, so a request
that passes the gateway passes the service, and one over a limit is refused at the gateway before it travels on."""

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class UploadLimits(BaseSettings):
    """`DETBOOTH_MAX_FILES`, `DETBOOTH_MAX_FILE_BYTES`, `DETBOOTH_MAX_TOTAL_BYTES`, `DETBOOTH_MAX_IMAGE_PIXELS`,
    `DETBOOTH_MAX_PAGES`, `DETBOOTH_DOCUMENT_DPI`: set them once for the whole deployment (the compose file passes
    them to both)."""

    model_config = SettingsConfigDict(env_prefix="DETBOOTH_", extra="ignore")

    max_files: int = Field(default=16, ge=1, description="files in `images` per /detect request")
    max_file_bytes: int = Field(default=20 * MiB, ge=1024, description="bytes per uploaded file")
    max_total_bytes: int = Field(default=100 * MiB, ge=1024, description="bytes per request body")
    max_image_pixels: int = Field(default=40_000_000, ge=1,
                                  description="pixels per image, and per PDF/TIFF page as rendered")
    max_pages: int = Field(default=32, ge=1,
                           description="results per /detect request: images plus the selected PDF/TIFF pages")
    # not a limit, but it sets how many pixels a PDF page has, so both sides must agree on it
    document_dpi: int = Field(default=144, ge=18, le=1200, description="PDF render resolution when a request names none")

    @model_validator(mode="after")
    def _consistent(self) -> "UploadLimits":
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError(f"DETBOOTH_MAX_FILE_BYTES ({self.max_file_bytes}) is larger than DETBOOTH_MAX_TOTAL_BYTES "
                             f"({self.max_total_bytes}): no request could carry such a file")
        if self.max_files > self.max_pages:
            raise ValueError(f"DETBOOTH_MAX_FILES ({self.max_files}) is larger than DETBOOTH_MAX_PAGES "
                             f"({self.max_pages}): every file gives at least one result")
        return self
