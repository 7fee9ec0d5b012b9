def f(event):
    """Returns the event unchanged."""
    return event
