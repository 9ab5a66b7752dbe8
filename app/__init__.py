"""The trainwire service: HTTP routes, settings, the job store and the event hub (the API's models
are the client's, in trainwire.models)."""
