"""spamgeo: geolocated spam intelligence from Microsoft Defender EmailEvents."""

__version__ = "0.1.0"
