"""leakhunt: find the driver that leaked locked pages or lock entries in a Windows kernel crash."""

__version__ = "0.1.0"
