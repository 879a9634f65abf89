"""The wire format: records, framing and segment codecs, in one place."""
