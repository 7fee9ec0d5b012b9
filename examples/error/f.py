def divide(a, b):
    return a / b


def f(event):
    """Raises ZeroDivisionError: shows how a function's error comes back."""
    return divide(1, 0)
