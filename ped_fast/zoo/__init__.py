"""Model-zoo screening: timm feature extraction, streamed reference
statistics, a resumable cache, scoring every model plain and with PED, and
the report (docs/screening.md)."""
