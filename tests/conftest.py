"""Shared pytest configuration for all qgpu test suites."""
