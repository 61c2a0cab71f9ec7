"""Cross-silo mode: each hospital runs a Flower SuperNode with its own data and key.

The node side (`hospital.Hospital`) runs the same jitted local update as the simulation
(`FederatedRound.client_train`) for its one client; the server side (`coordinator.Coordinator`)
runs the same jitted aggregation (`FederatedRound.aggregate`) over the replies it accepted, and
keeps the ledger. `client_app` / `server_app` are the thin Flower glue; `local` starts a SuperLink
and one SuperNode per hospital on one machine. Only those two glue modules and `local` import
`flwr` (the optional `[flower]` extra); the simulation never imports this package.
"""
