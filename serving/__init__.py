"""The HTTP service (BentoML): ranking with reasons, diversity, similar items, trending, new
arrivals, business filters and cold start. Built in the serving issue; empty until then."""
