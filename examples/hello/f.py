import platform


def f(event):
    """Greets whoever the event names."""
    name = (event or {}).get("name", "world")
    return {"greeting": f"hello, {name}", "python": platform.python_version()}
