"""Cohort builders: MIMIC-CXR and EMBED table exports -> one labelled cohort table (one row per image).

Run on real exports or on the phantom writers' output (``medcf phantom cxr|mammo``): same layout.
"""
