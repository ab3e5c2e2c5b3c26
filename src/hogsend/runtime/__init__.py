"""Durable execution: the only package that imports DBOS.

The worker launches DBOS against hogsend's Postgres, declares the queues and keeps a
heartbeat row; later modules here (journey runner, dispatcher, campaigns) register
their workflows before launch.
"""
