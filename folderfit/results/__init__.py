"""Scores and how they are shown: metrics (pure functions), comparison (two evaluations paired
image by image: is the difference real?), reports (figures and CSV), the label
review's lists as text (review_lists), and the HTML pages (pages).
"""
