"""Client library and `detbooth` command for a DetBooth gateway."""

from detbooth_client.client import ApiError, DetBoothClient, Event

__all__ = ["ApiError", "DetBoothClient", "Event"]
