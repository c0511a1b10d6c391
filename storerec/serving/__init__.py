"""The HTTP service (BentoML): personalised lists with reasons and diversity, similar items,
trending, new arrivals, business filters and cold start over the ranking pipeline; feedback
events into the event log; one served version kept on every worker.

Modules: ``service`` (the BentoML service class and its endpoints), ``http`` (the gate in front
of them, the request/response models per route and the OpenAPI document), ``schemas`` (those
models), ``state`` (loading a registered version and the experiments' variants), ``control``
(the store the workers share to serve one version), ``watchdog`` (a worker exits with its
arbiter), ``freqcap`` (the frequency cap), ``launch`` (what ``storerec serve`` hands to BentoML),
``arbiter`` (``bentoml serve`` with the service's own metrics folder), ``startwatch`` (the
time a start has taken and has left, until ``/readyz`` answers 200), ``explore`` (the explorer's
pages at ``/explore``; templates and assets in ``explorer/``).
"""
