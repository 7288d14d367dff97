"""The Flask facade: blueprints that parse a request, call the service, render the answer."""
