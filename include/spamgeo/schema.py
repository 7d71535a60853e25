"""Column names and types shared by every step, from the raw extract to the published CSV.

The raw extract keeps the EmailEvents columns the pipeline needs; the published daily file
starts with the seed hunting query's columns so existing Power BI reports keep working.
"""

from __future__ import annotations

import pyarrow as pa

EMAIL_EVENTS_TABLE = "EmailEvents"

# Column name -> Log Analytics column type, in the order the extraction query projects them.
RAW_COLUMNS: dict[str, str] = {
    "TimeGenerated": "datetime",
    "Timestamp": "datetime",
    "NetworkMessageId": "string",
    "RecipientEmailAddress": "string",
    "SenderIPv4": "string",
    "SenderIPv6": "string",
    "ThreatTypes": "string",
}

# The seed query's output columns, first in every published file and in this order.
SEED_COLUMNS: list[str] = ["SenderIPv6", "SenderIPv4", "Latitude", "Longitude", "count_"]

# What geolocation tells about an address besides Latitude and Longitude, in published order.
LOCATION_COLUMNS: list[str] = [
    "AddressClass",
    "CountryIsoCode",
    "Country",
    "Subdivision",
    "City",
    "AccuracyRadiusKm",
    "ASN",
    "ASOrganization",
]

# Everything the daily partition holds after the seed columns, in this order.
DAILY_EXTRA_COLUMNS: list[str] = [
    "Date",
    "DistinctMessages",
    "DistinctMessageRecipients",
    "IPVersion",
    *LOCATION_COLUMNS,
]

DAILY_COLUMNS: list[str] = SEED_COLUMNS + DAILY_EXTRA_COLUMNS

# One decimal octet as `ipaddress` accepts it, 0-255 without leading zeros, and a dotted quad of
# four: the shape of a SenderIPv4 value, which RE2 checks over a whole column without Python.
IPV4_OCTET_PATTERN = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN = rf"{IPV4_OCTET_PATTERN}(?:\.{IPV4_OCTET_PATTERN}){{3}}"

# The Arrow type of every daily column: numbers stay numbers, so Power BI needs no conversion.
DAILY_TYPES: dict[str, pa.DataType] = {
    "SenderIPv6": pa.string(),
    "SenderIPv4": pa.string(),
    "Latitude": pa.float64(),
    "Longitude": pa.float64(),
    "count_": pa.int64(),
    "Date": pa.date32(),
    "DistinctMessages": pa.int64(),
    "DistinctMessageRecipients": pa.int64(),
    "IPVersion": pa.int64(),
    "AddressClass": pa.string(),
    "CountryIsoCode": pa.string(),
    "Country": pa.string(),
    "Subdivision": pa.string(),
    "City": pa.string(),
    "AccuracyRadiusKm": pa.int64(),
    "ASN": pa.int64(),
    "ASOrganization": pa.string(),
}
