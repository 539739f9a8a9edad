"""The Big Five trait names and split names, defined once for the whole toolkit.

``TRAITS`` fixes the order of the five targets everywhere: label arrays of shape
``(n, 5)``, model outputs, metric tables and reports all use it. The order is the usual
OCEAN order (Openness, Conscientiousness, Extraversion, Agreeableness, Neuroticism).
The names are the keys of the First Impressions V2 annotation pickles, so the
``neuroticism`` column holds the dataset's label as released (it behaves like emotional
stability: it correlates +0.80 with extraversion, see ``../shared/DESIGN.md`` section 3).

``interview`` is read from the annotations but is never a target.
"""

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
"""The five targets, in OCEAN order. Column ``i`` of every label array is ``TRAITS[i]``."""

INTERVIEW = "interview"
"""The extra annotation key ("invite for interview"); read, reported, never a target."""

SPLITS = ("train", "validation", "test")
"""Split names used in clip tables, cache folders and reports."""
