"""dcoder: the command line that wires the stages (data_prep → coder → serving/eval) together.

This package holds only the CLI. It is the one place allowed to import every stage
(ARCHITECTURE.md: "The CLI is the only place that wires stages together").
"""

__version__ = "0.1.0"
