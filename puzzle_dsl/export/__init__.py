"""Exports of finished children."""
