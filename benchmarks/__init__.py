"""`make bench`: performance measured as ratios and bounds within one run, never in tests."""
