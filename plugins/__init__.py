"""The built-in plugins. Every module here is registered with each simulation's plugin manager; each
uses only the public API of ``mmnsim`` (what ``mmnsim/__init__.py`` exports), as an external plugin would.
"""
