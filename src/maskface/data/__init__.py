"""Data in: dataset sources, the scan of what DVC sees, splits and pairs, synthetic faces and masks."""
