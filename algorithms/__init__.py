"""Processing provider `geoseg`: one algorithm per file, each thin over core/."""
