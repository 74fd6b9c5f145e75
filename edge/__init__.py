"""Edge service for in-store smart displays.

Pipeline (one module per stage): capture -> detect -> track -> classify ->
audience -> select -> publish. Records passed between stages live in
`edge.records`; configuration in `edge.config`.
"""

__version__ = "0.1.0"
