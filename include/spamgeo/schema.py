"""Column names and types shared by every step, from the raw extract to the published CSV.

The raw extract keeps the EmailEvents columns the pipeline needs; the published daily file
starts with the seed hunting query's columns so existing Power BI reports keep working.
"""

from __future__ import annotations

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

# Everything the daily partition holds after the seed columns, in this order.
DAILY_EXTRA_COLUMNS: list[str] = [
    "Date",
    "DistinctMessages",
    "DistinctMessageRecipients",
    "IPVersion",
    "AddressClass",
    "CountryIsoCode",
    "Country",
    "Subdivision",
    "City",
    "AccuracyRadiusKm",
    "ASN",
    "ASOrganization",
]

DAILY_COLUMNS: list[str] = SEED_COLUMNS + DAILY_EXTRA_COLUMNS
