"""Load benchmark of the users service against the tutorial, a peer, a floor and two limits."""
