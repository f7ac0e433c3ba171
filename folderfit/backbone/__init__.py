"""Pretrained networks: name resolution, building and stages (architecture), where weights come
from and their preprocessing (weights), and test-time views (views).
"""
