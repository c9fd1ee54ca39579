//! The admin API described as an OpenAPI 3.1 document, served at `/openapi.json`.

use serde_json::{json, Value};

/// The OpenAPI document of the admin endpoint.
pub fn document() -> Value {
    let text = |description: &str| json!({ "description": description, "content": { "text/plain": { "schema": { "type": "string" } } } });
    let errors = json!({
        "type": "object",
        "required": ["errors"],
        "properties": { "errors": { "type": "array", "items": { "$ref": "#/components/schemas/FieldError" } } }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "poolserve admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Health, metrics, config and events of every connection pool of a poolserve process."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "FieldError": {
                    "type": "object",
                    "required": ["field", "value", "reason"],
                    "properties": {
                        "field": { "type": "string" },
                        "value": { "type": "string" },
                        "reason": { "type": "string" }
                    }
                },
                "ConfigChange": {
                    "type": "object",
                    "required": ["field", "old", "new"],
                    "properties": {
                        "field": { "type": "string" },
                        "old": { "type": "string" },
                        "new": { "type": "string" }
                    }
                },
                "PoolHealth": {
                    "type": "object",
                    "required": ["protocol", "status", "utilization_ratio", "active_connections",
                                 "max_connections", "rejected_connections",
                                 "average_response_time_ms", "error_rate", "message"],
                    "properties": {
                        "protocol": { "type": "string" },
                        "status": { "enum": ["healthy", "degraded", "overloaded", "unavailable"] },
                        "utilization_ratio": { "type": "number" },
                        "active_connections": { "type": "integer" },
                        "max_connections": { "type": ["integer", "null"] },
                        "rejected_connections": { "type": "integer" },
                        "average_response_time_ms": { "type": "number" },
                        "error_rate": { "type": "number" },
                        "message": { "type": "string" }
                    }
                },
                "PoolSettings": {
                    "type": "object",
                    "description": "Pool keys as in the config file's [server.pool] section; durations are strings such as \"30s\", sizes integer bytes.",
                    "additionalProperties": false,
                    "properties": {
                        "max_connections": { "type": ["integer", "null"] },
                        "max_connections_per_ip": { "type": ["integer", "null"] },
                        "max_connections_per_ip_v6_prefix": { "type": ["integer", "null"] },
                        "connection_timeout": { "type": ["string", "null"] },
                        "keep_alive_timeout": { "type": ["string", "null"] },
                        "request_timeout": { "type": ["string", "null"] },
                        "headers_timeout": { "type": ["string", "null"] },
                        "max_connection_age": { "type": ["string", "null"] },
                        "max_connection_age_grace": { "type": ["string", "null"] },
                        "max_requests_per_connection": { "type": ["integer", "null"] },
                        "http1": { "type": ["object", "null"] },
                        "http2": { "type": ["object", "null"] },
                        "grpc": { "type": ["object", "null"] },
                        "websocket": { "type": ["object", "null"] },
                        "health": { "type": ["object", "null"] }
                    }
                }
            }
        },
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/metrics": { "get": {
                "summary": "Prometheus metrics, every name prefixed poolserve_, labelled server and protocol",
                "responses": { "200": text("OpenMetrics text") }
            }},
            "/health": { "get": {
                "summary": "The worst status of the servers' pools and each pool's health, the admin endpoint's included",
                "responses": { "200": { "description": "health", "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["status", "pools"],
                    "properties": {
                        "status": { "enum": ["healthy", "degraded", "overloaded", "unavailable"] },
                        "pools": { "type": "object", "additionalProperties": { "$ref": "#/components/schemas/PoolHealth" } }
                    }
                }}}}}
            }},
            "/livez": { "get": {
                "summary": "200 while the process runs; no token needed unless probes_need_token",
                "responses": { "200": text("ok") }
            }},
            "/readyz": { "get": {
                "summary": "200 when every server's pool is healthy or degraded and the process is not draining; no token needed unless probes_need_token",
                "responses": { "200": text("ready"), "503": text("not ready, naming the pools and why") }
            }},
            "/config": { "get": {
                "summary": "The running config; pool settings as in force now",
                "responses": { "200": { "description": "config", "content": { "application/json": { "schema": { "type": "object" } } } } }
            }},
            "/servers/{name}/pool": { "patch": {
                "summary": "Changes a server's pool settings live: all of the patch, or nothing",
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PoolSettings" } } } },
                "responses": {
                    "200": { "description": "applied", "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["server", "changes"],
                        "properties": {
                            "server": { "type": "string" },
                            "changes": { "type": "array", "items": { "$ref": "#/components/schemas/ConfigChange" } }
                        }
                    }}}},
                    "400": { "description": "refused, naming each bad field; nothing applied", "content": { "application/json": { "schema": errors.clone() } } },
                    "404": { "description": "no such server", "content": { "application/json": { "schema": errors } } }
                }
            }},
            "/events": { "get": {
                "summary": "Every pool event as a server-sent event named by its kind (connection_added, connection_removed, connection_timeout, connection_error, pool_limit_reached, accept_error, health_status_changed; lagged when events were lost)",
                "responses": { "200": { "description": "event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } } }
            }},
            "/": { "get": {
                "summary": "The live dashboard (HTML)",
                "responses": { "200": { "description": "the page", "content": { "text/html": { "schema": { "type": "string" } } } } }
            }},
            "/stats": { "get": {
                "summary": "Every pool's metrics snapshot: counters, gauges, latency percentiles since start; the process answering; connections accepted per listening socket",
                "responses": { "200": { "description": "snapshots", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["pid", "pools", "accepted_by_socket"],
                    "properties": {
                        "pid": { "type": "integer", "description": "the process answering (the new one after a binary upgrade)" },
                        "pools": { "type": "array", "items": { "type": "object" } },
                        "accepted_by_socket": {
                            "type": "object",
                            "description": "by server, the connections each of its listening sockets (one per accept loop) accepted",
                            "additionalProperties": { "type": "array", "items": { "type": "integer" } }
                        }
                    }
                }}}}}
            }},
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }
            }}
        }
    })
}
