"""Repositories: functions taking a session and returning plain values. All SQL lives in db/."""
