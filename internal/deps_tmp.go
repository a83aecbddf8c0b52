package internal
import (
 _ "github.com/hashicorp/raft"
 _ "github.com/hashicorp/raft-boltdb/v2"
 _ "github.com/hashicorp/memberlist"
 _ "github.com/jackc/pgx/v5/pgxpool"
 _ "github.com/redis/go-redis/v9"
 _ "github.com/nats-io/nats.go"
 _ "github.com/nats-io/nats-server/v2/server"
 _ "github.com/gin-gonic/gin"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/cespare/xxhash/v2"
 _ "github.com/pressly/goose/v3"
 _ "github.com/golang-jwt/jwt/v5"
 _ "github.com/google/uuid"
 _ "github.com/Shopify/toxiproxy/v2"
 _ "gopkg.in/yaml.v3"
)

