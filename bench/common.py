"""Helpers the bench scripts share; what every one prints first: the machine, threads and software it measured on."""

from __future__ import annotations

from dprotonet_core.machine import machine_info

__all__ = ["machine_info"]
