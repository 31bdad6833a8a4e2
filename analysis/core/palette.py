"""One colour per policy family, the same on the dashboard and in reports; and how "your mechanism" (the
user's own stopper) is drawn on both: an orange diamond."""
FAMILY_COLORS = {"budget": "#64748b", "consistency": "#2563eb", "confidence": "#c2410c", "entropy": "#16a34a",
                 "learned": "#9333ea", "hybrid": "#db2777"}
INCUMBENT_COLOR, INCUMBENT_EDGE = "#ea580c", "#111827"
