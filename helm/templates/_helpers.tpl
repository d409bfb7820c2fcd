{{/*
Base name of every object: the release name (helm install chat ./helm -> chat, chat-admin,
chat-redis, ...), or fullnameOverride.
*/}}
{{- define "roomcast.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "roomcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "roomcast.labels" -}}
helm.sh/chart: {{ include "roomcast.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roomcast
{{- end -}}

{{/* Selector of the gateway pods. */}}
{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* Selector of the bundled Redis pods. */}}
{{- define "roomcast.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "roomcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "roomcast.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "roomcast.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "roomcast.secretName" -}}
{{- default (printf "%s-secrets" (include "roomcast.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "roomcast.redisHost" -}}
{{- printf "%s-redis" (include "roomcast.fullname" .) -}}
{{- end -}}

{{/* The bus URL handed to the gateway as ROOMCAST_REDIS__URL (no password in it). */}}
{{- define "roomcast.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s:6379" (include "roomcast.redisHost" .) -}}
{{- else -}}
{{- required "redis.external.url is required when redis.enabled is false (with redis.mode standalone)" .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/*
The bus mode (redis.mode): standalone, cluster or sentinel, after checking the
redis.external values fit together. Every combination the gateway would refuse at start
(exit 64) fails the render here instead, naming the value to fix. With the bundled Redis
(redis.enabled) the other redis.external values are not used, as before.
*/}}
{{- define "roomcast.redisMode" -}}
{{- $r := .Values.redis -}}
{{- $x := $r.external -}}
{{- $mode := default "standalone" $r.mode -}}
{{- if and $r.enabled (eq $mode "cluster") -}}
{{- fail "redis.mode=cluster needs redis.enabled=false: the bundled Redis is a single server, not a Redis Cluster (set redis.enabled=false and list the seed nodes in redis.external.nodes)" -}}
{{- end -}}
{{- if and $r.enabled (eq $mode "sentinel") -}}
{{- fail "redis.mode=sentinel needs redis.enabled=false: the bundled Redis has no Sentinel (set redis.enabled=false, redis.external.sentinels and redis.external.sentinelMaster)" -}}
{{- end -}}
{{- if not $r.enabled -}}
{{- if eq $mode "cluster" -}}
{{- if $x.url -}}
{{- fail "redis.external.url must be empty with redis.mode=cluster (the gateway refuses redis.url in cluster mode): list the seed nodes in redis.external.nodes" -}}
{{- end -}}
{{- if empty $x.nodes -}}
{{- fail "redis.mode=cluster needs redis.external.nodes: at least one seed node as host:port (e.g. the configuration endpoint, clustercfg.chat.abc123.use1.cache.amazonaws.com:6379)" -}}
{{- end -}}
{{- end -}}
{{- if eq $mode "sentinel" -}}
{{- if $x.url -}}
{{- fail "redis.external.url must be empty with redis.mode=sentinel (the gateway refuses redis.url in sentinel mode): list the sentinels in redis.external.sentinels" -}}
{{- end -}}
{{- if empty $x.sentinels -}}
{{- fail "redis.mode=sentinel needs redis.external.sentinels: at least one sentinel as host:port (e.g. redis-sentinel.data.svc.cluster.local:26379)" -}}
{{- end -}}
{{- if not $x.sentinelMaster -}}
{{- fail "redis.mode=sentinel needs redis.external.sentinelMaster: the name the sentinels monitor the master under (sentinel monitor NAME ..., e.g. mymaster)" -}}
{{- end -}}
{{- end -}}
{{- if and (not (empty $x.nodes)) (ne $mode "cluster") -}}
{{- fail (printf "redis.external.nodes is only used with redis.mode=cluster (mode is %s): set the mode, or remove the nodes" $mode) -}}
{{- end -}}
{{- if and (or (not (empty $x.sentinels)) $x.sentinelMaster) (ne $mode "sentinel") -}}
{{- fail (printf "redis.external.sentinels and redis.external.sentinelMaster are only used with redis.mode=sentinel (mode is %s): set the mode, or remove them" $mode) -}}
{{- end -}}
{{- if and $x.caSecret.name $x.caConfigMap.name -}}
{{- fail "set at most one of redis.external.caSecret.name and redis.external.caConfigMap.name (the CA bundle comes from one of them)" -}}
{{- end -}}
{{- if and (or $x.caSecret.name $x.caConfigMap.name) (not $x.tls) (not (hasPrefix "rediss://" (toString $x.url))) -}}
{{- fail (printf "redis.external.%s needs redis.external.tls=true (or a rediss:// redis.external.url): the gateway refuses redis.tls_ca_file without TLS" (ternary "caSecret" "caConfigMap" (not (empty $x.caSecret.name)))) -}}
{{- end -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/*
The CA bundle of an external Redis with TLS (redis.external.caSecret or caConfigMap):
"secret" or "configMap" when one is mounted, empty otherwise (and always with the bundled
Redis, which has no TLS).
*/}}
{{- define "roomcast.redisCaSource" -}}
{{- if not .Values.redis.enabled -}}
{{- if .Values.redis.external.caSecret.name -}}secret{{- else if .Values.redis.external.caConfigMap.name -}}configMap{{- end -}}
{{- end -}}
{{- end -}}

{{- define "roomcast.redisCaDir" -}}/etc/roomcast-redis-ca{{- end -}}
{{- define "roomcast.redisCaFile" -}}{{ include "roomcast.redisCaDir" . }}/ca.crt{{- end -}}

{{/*
The gateway's Redis variables (ROOMCAST_REDIS__*, docs/configuration.md; lists
comma-separated). standalone: ROOMCAST_REDIS__URL (the bundled Redis or redis.external.url).
cluster: MODE and NODES; sentinel: MODE, SENTINELS and SENTINEL_MASTER; never a URL there.
External Redis: USERNAME, TLS and TLS_CA_FILE when set. The password always comes from the
Secret (secretKeyRef), never from a value in the pod spec or the ConfigMap.
*/}}
{{- define "roomcast.redisEnv" -}}
{{- $mode := include "roomcast.redisMode" . -}}
{{- $x := .Values.redis.external -}}
{{- if eq $mode "standalone" }}
- name: ROOMCAST_REDIS__URL
  value: {{ include "roomcast.redisUrl" . | quote }}
{{- else }}
- name: ROOMCAST_REDIS__MODE
  value: {{ $mode | quote }}
{{- if eq $mode "cluster" }}
- name: ROOMCAST_REDIS__NODES
  value: {{ join "," $x.nodes | quote }}
{{- else }}
- name: ROOMCAST_REDIS__SENTINELS
  value: {{ join "," $x.sentinels | quote }}
- name: ROOMCAST_REDIS__SENTINEL_MASTER
  value: {{ $x.sentinelMaster | quote }}
{{- end }}
{{- end }}
{{- if not .Values.redis.enabled }}
{{- with $x.username }}
- name: ROOMCAST_REDIS__USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $x.tls }}
- name: ROOMCAST_REDIS__TLS
  value: "true"
{{- end }}
{{- if gt (int $x.replicaAcks) 0 }}
- name: ROOMCAST_REDIS__REPLICA_ACKS
  value: {{ $x.replicaAcks | quote }}
{{- end }}
{{- if include "roomcast.redisCaSource" . }}
- name: ROOMCAST_REDIS__TLS_CA_FILE
  value: {{ include "roomcast.redisCaFile" . | quote }}
{{- end }}
{{- end }}
- name: ROOMCAST_REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "roomcast.secretName" . }}
      key: {{ .Values.secrets.keys.redisPassword }}
      optional: {{ include "roomcast.redisPasswordOptional" . }}
{{- end -}}

{{/* The CA bundle volume and mount (external Redis with caSecret / caConfigMap only). */}}
{{- define "roomcast.redisVolumes" -}}
{{- $src := include "roomcast.redisCaSource" . -}}
{{- $x := .Values.redis.external -}}
{{- if eq $src "secret" }}
- name: redis-ca
  secret:
    secretName: {{ $x.caSecret.name }}
    # Only the bundle, under a fixed file name; 0444 (a CA is no secret, any user reads it).
    defaultMode: 292
    items:
      - key: {{ $x.caSecret.key }}
        path: ca.crt
{{- else if eq $src "configMap" }}
- name: redis-ca
  configMap:
    name: {{ $x.caConfigMap.name }}
    defaultMode: 292
    items:
      - key: {{ $x.caConfigMap.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "roomcast.redisVolumeMounts" -}}
{{- if include "roomcast.redisCaSource" . }}
- name: redis-ca
  mountPath: {{ include "roomcast.redisCaDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Duration string -> milliseconds. Accepts the single-unit forms the schema allows:
"250ms", "5s", "1m", "2h" (and a bare "0"). Anything else fails the render.
Usage: include "roomcast.durationMs" (list "drain.timeout" .Values.drain.timeout)
*/}}
{{- define "roomcast.durationMs" -}}
{{- $key := index . 0 -}}
{{- $d := index . 1 | toString | trim -}}
{{- if regexMatch "^[0-9]+ms$" $d -}}
{{- trimSuffix "ms" $d | atoi -}}
{{- else if regexMatch "^[0-9]+s$" $d -}}
{{- mul (trimSuffix "s" $d | atoi) 1000 -}}
{{- else if regexMatch "^[0-9]+m$" $d -}}
{{- mul (trimSuffix "m" $d | atoi) 60000 -}}
{{- else if regexMatch "^[0-9]+h$" $d -}}
{{- mul (trimSuffix "h" $d | atoi) 3600000 -}}
{{- else if eq $d "0" -}}
0
{{- else -}}
{{- fail (printf "%s: cannot parse duration %q (write e.g. 500ms, 5s, 1m)" $key $d) -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds = ceil((drain.propagationDelay + drain.timeout +
drain.gracePeriodMargin) / 1s). Computed here so it can never disagree with the drain
settings in the config file: after SIGTERM the gateway keeps accepting for the propagation
delay, then waits at most drain.timeout for sessions to close; the margin covers process
exit and telemetry flush.
*/}}
{{- define "roomcast.terminationGracePeriodSeconds" -}}
{{- $p := include "roomcast.durationMs" (list "drain.propagationDelay" .Values.drain.propagationDelay) | atoi -}}
{{- $t := include "roomcast.durationMs" (list "drain.timeout" .Values.drain.timeout) | atoi -}}
{{- $s := include "roomcast.durationMs" (list "drain.spread" .Values.drain.spread) | atoi -}}
{{- $m := include "roomcast.durationMs" (list "drain.gracePeriodMargin" .Values.drain.gracePeriodMargin) | atoi -}}
{{- if gt $s $t -}}
{{- fail (printf "drain.spread (%s) must not be longer than drain.timeout (%s): sessions still open at the deadline are cut" .Values.drain.spread .Values.drain.timeout) -}}
{{- end -}}
{{- div (add $p $t $m 999) 1000 -}}
{{- end -}}

{{/* Whether a Redis password is expected in the Secret. */}}
{{- define "roomcast.redisPasswordOptional" -}}
{{- if .Values.redis.enabled -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{/*
Identity (auth.*). In jwt mode the HS256 key comes from a Secret mounted as a file
(auth.jwt.secret_file): auth.jwt.existingSecret, or, with neither jwksUrl nor publicKey,
the Secret <fullname>-jwt the chart generates (templates/secret.yaml). It never goes into
the ConfigMap or the environment. A PEM public key (auth.jwt.publicKey) is a ConfigMap
mounted as auth.jwt.public_key_file.
*/}}
{{- define "roomcast.jwtMode" -}}
{{- if eq .Values.auth.mode "jwt" -}}true{{- end -}}
{{- end -}}

{{/* jwt mode without any key given: the chart generates the HS256 key. */}}
{{- define "roomcast.jwtGenerateSecret" -}}
{{- $j := .Values.auth.jwt -}}
{{- if and (include "roomcast.jwtMode" .) (not $j.existingSecret) (not $j.jwksUrl) (not $j.publicKey) -}}true{{- end -}}
{{- end -}}

{{- define "roomcast.jwtGeneratedSecretName" -}}
{{- printf "%s-jwt" (include "roomcast.fullname" .) -}}
{{- end -}}

{{/* Name of the Secret holding the HS256 key (empty: no HS256 key). */}}
{{- define "roomcast.jwtSecretName" -}}
{{- if include "roomcast.jwtMode" . -}}
{{- if .Values.auth.jwt.existingSecret -}}
{{- .Values.auth.jwt.existingSecret -}}
{{- else if include "roomcast.jwtGenerateSecret" . -}}
{{- include "roomcast.jwtGeneratedSecretName" . -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Key of the HS256 key in that Secret (the generated one always uses jwt-secret). */}}
{{- define "roomcast.jwtSecretKey" -}}
{{- if .Values.auth.jwt.existingSecret -}}{{ .Values.auth.jwt.existingSecretKey }}{{- else -}}jwt-secret{{- end -}}
{{- end -}}

{{- define "roomcast.jwtSecretDir" -}}/var/run/secrets/roomcast/jwt{{- end -}}
{{- define "roomcast.jwtSecretFile" -}}{{ include "roomcast.jwtSecretDir" . }}/secret{{- end -}}
{{- define "roomcast.jwtPublicKeyDir" -}}/etc/roomcast-jwt-public-key{{- end -}}
{{- define "roomcast.jwtPublicKeyFile" -}}{{ include "roomcast.jwtPublicKeyDir" . }}/public-key.pem{{- end -}}

{{/* Volumes for the jwt key files (gateway and test pods); nothing in anonymous mode. */}}
{{- define "roomcast.authVolumes" -}}
{{- if include "roomcast.jwtSecretName" . }}
- name: jwt-secret
  secret:
    secretName: {{ include "roomcast.jwtSecretName" . }}
    # Only the key, under a fixed file name; 0440 (root, group = podSecurityContext.fsGroup)
    # when there is an fsGroup, 0444 otherwise (a non-root user must read it).
    defaultMode: {{ if .Values.podSecurityContext.fsGroup }}288{{ else }}292{{ end }}
    items:
      - key: {{ include "roomcast.jwtSecretKey" . }}
        path: secret
{{- end }}
{{- if and (include "roomcast.jwtMode" .) .Values.auth.jwt.publicKey }}
- name: jwt-public-key
  configMap:
    name: {{ include "roomcast.fullname" . }}-jwt-public-key
{{- end }}
{{- end -}}

{{- define "roomcast.authVolumeMounts" -}}
{{- if include "roomcast.jwtSecretName" . }}
- name: jwt-secret
  mountPath: {{ include "roomcast.jwtSecretDir" . }}
  readOnly: true
{{- end }}
{{- if and (include "roomcast.jwtMode" .) .Values.auth.jwt.publicKey }}
- name: jwt-public-key
  mountPath: {{ include "roomcast.jwtPublicKeyDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Server API (api.*) and hooks (hooks.*). The API keys come from a Secret mounted as a file
(api.keys_file): api.existingSecret, or the Secret <fullname>-api the chart generates
(templates/secret.yaml). The hooks' HMAC key comes from hooks.existingSecret, mounted as
hooks.secret_file; it is required with hooks.publish.url (your backend must know the key
to verify the signatures, so the chart does not make one up). Neither key goes into the
ConfigMap or the environment.
*/}}
{{- define "roomcast.apiGenerateSecret" -}}
{{- if and .Values.api.enabled (not .Values.api.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "roomcast.apiGeneratedSecretName" -}}
{{- printf "%s-api" (include "roomcast.fullname" .) -}}
{{- end -}}

{{/* Name of the Secret holding the API keys (empty: the API is off). */}}
{{- define "roomcast.apiSecretName" -}}
{{- if .Values.api.enabled -}}
{{- default (include "roomcast.apiGeneratedSecretName" .) .Values.api.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Key of the API keys in that Secret (the generated one always uses api-key). */}}
{{- define "roomcast.apiSecretKey" -}}
{{- if .Values.api.existingSecret -}}{{ .Values.api.existingSecretKey }}{{- else -}}api-key{{- end -}}
{{- end -}}

{{- define "roomcast.apiKeysDir" -}}/var/run/secrets/roomcast/api{{- end -}}
{{- define "roomcast.apiKeysFile" -}}{{ include "roomcast.apiKeysDir" . }}/keys{{- end -}}

{{/* Name of the Secret holding the hooks' HMAC key (empty: none). A publish URL without one fails the render. */}}
{{- define "roomcast.hooksSecretName" -}}
{{- if and .Values.hooks.publish.url (not .Values.hooks.existingSecret) -}}
{{- fail "hooks.publish.url needs hooks.existingSecret: the name of a Secret holding the HMAC-SHA256 key (16+ bytes, under hooks.existingSecretKey) that signs the hook requests; your backend verifies them with the same key" -}}
{{- end -}}
{{- .Values.hooks.existingSecret -}}
{{- end -}}

{{- define "roomcast.hooksSecretDir" -}}/var/run/secrets/roomcast/hooks{{- end -}}
{{- define "roomcast.hooksSecretFile" -}}{{ include "roomcast.hooksSecretDir" . }}/secret{{- end -}}

{{/* Volumes for the API keys and the hooks' key (gateway pods only); nothing by default. */}}
{{- define "roomcast.apiVolumes" -}}
{{- $mode := ternary 288 292 (not (empty .Values.podSecurityContext.fsGroup)) }}
{{- if include "roomcast.apiSecretName" . }}
- name: api-keys
  secret:
    secretName: {{ include "roomcast.apiSecretName" . }}
    # Only the key, under a fixed file name; 0440 with an fsGroup, 0444 otherwise.
    defaultMode: {{ $mode }}
    items:
      - key: {{ include "roomcast.apiSecretKey" . }}
        path: keys
{{- end }}
{{- if include "roomcast.hooksSecretName" . }}
- name: hooks-secret
  secret:
    secretName: {{ include "roomcast.hooksSecretName" . }}
    defaultMode: {{ $mode }}
    items:
      - key: {{ .Values.hooks.existingSecretKey }}
        path: secret
{{- end }}
{{- end -}}

{{- define "roomcast.apiVolumeMounts" -}}
{{- if include "roomcast.apiSecretName" . }}
- name: api-keys
  mountPath: {{ include "roomcast.apiKeysDir" . }}
  readOnly: true
{{- end }}
{{- if include "roomcast.hooksSecretName" . }}
- name: hooks-secret
  mountPath: {{ include "roomcast.hooksSecretDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A duration of at least 1s, or the render fails naming the value. */}}
{{- define "roomcast.atLeastOneSecond" -}}
{{- if lt (include "roomcast.durationMs" . | atoi) 1000 -}}
{{- fail (printf "%s must be at least 1s, not %v" (index . 0) (index . 1)) -}}
{{- end -}}
{{- index . 1 | toJson -}}
{{- end -}}

{{/*
server.trusted_proxies: the given list; when not set (null) and the Ingress is on, the
private IPv4 ranges the ingress controller's pods have their addresses in, so its
X-Forwarded-For (the real client) is believed; otherwise none.
*/}}
{{- define "roomcast.trustedProxies" -}}
{{- if kindIs "invalid" .Values.trustedProxies -}}
{{- if .Values.ingress.enabled -}}
{{- list "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" | toJson -}}
{{- else -}}
[]
{{- end -}}
{{- else -}}
{{- .Values.trustedProxies | toJson -}}
{{- end -}}
{{- end -}}

{{/* The gateway's config file. Keys exactly as docs/configuration.md. */}}
{{- define "roomcast.configToml" -}}
# roomcast configuration rendered by the Helm chart (release {{ .Release.Name }}).
{{- $x := .Values.redis.external }}
{{- if or .Values.redis.enabled (and (eq (include "roomcast.redisMode" .) "standalone") (not $x.username) (not $x.tls) (not (include "roomcast.redisCaSource" .))) }}
# redis.url, redis.password and node.id come from the environment (ROOMCAST_REDIS__URL,
# ROOMCAST_REDIS__PASSWORD from the Secret, ROOMCAST_NODE__ID = the pod name).
{{- else }}
# The Redis connection (redis.mode = {{ include "roomcast.redisMode" . | toJson }}; every redis.* key but
# redis.prefix, with redis.password) and node.id come from the environment
# (ROOMCAST_REDIS__*, the password from the Secret, ROOMCAST_NODE__ID = the pod name).
{{- end }}

[server]
listen = {{ printf "%s:%d" .Values.server.bindAddress (int .Values.server.port) | toJson }}
allowed_origins = {{ .Values.allowedOrigins | default list | toJson }}
trusted_proxies = {{ include "roomcast.trustedProxies" . }}
header_timeout = {{ .Values.headerTimeout | toJson }}
compression = {{ .Values.compression.enabled | toJson }}
compression_min_bytes = {{ .Values.compression.minBytes | int }}

[auth]
mode = {{ .Values.auth.mode | toJson }}
timeout = {{ .Values.auth.timeout | toJson }}
refresh_notice = {{ .Values.auth.refreshNotice | toJson }}
{{- if include "roomcast.jwtMode" . }}
{{- $j := .Values.auth.jwt }}

[auth.jwt]
leeway = {{ $j.leeway | toJson }}
{{- with $j.issuer }}
issuer = {{ . | toJson }}
{{- end }}
{{- with $j.audience }}
audience = {{ . | toJson }}
{{- end }}
{{- with $j.jwksUrl }}
jwks_url = {{ . | toJson }}
{{- end }}
{{- if include "roomcast.jwtSecretName" . }}
# The HS256 key: a file from the Secret {{ include "roomcast.jwtSecretName" . }}, never the key itself.
secret_file = {{ include "roomcast.jwtSecretFile" . | toJson }}
{{- end }}
{{- if $j.publicKey }}
public_key_file = {{ include "roomcast.jwtPublicKeyFile" . | toJson }}
{{- end }}
{{- end }}

{{- if .Values.api.enabled }}
{{- $a := .Values.api }}

[api]
# The API keys: a file from the Secret {{ include "roomcast.apiSecretName" . }}, never the keys themselves.
keys_file = {{ include "roomcast.apiKeysFile" . | toJson }}
idempotency_ttl = {{ include "roomcast.atLeastOneSecond" (list "api.idempotencyTtl" $a.idempotencyTtl) }}
kick_ttl = {{ include "roomcast.atLeastOneSecond" (list "api.kickTtl" $a.kickTtl) }}
requests_per_second = {{ int $a.requestsPerSecond }}
max_body_bytes = {{ int $a.maxBodyBytes }}
{{- end }}
{{- if include "roomcast.hooksSecretName" . }}

[hooks]
# The HMAC key signing hook requests: a file from the Secret {{ include "roomcast.hooksSecretName" . }}.
secret_file = {{ include "roomcast.hooksSecretFile" . | toJson }}
{{- end }}
{{- with .Values.hooks.publish }}
{{- if .url }}

[hooks.publish]
url = {{ .url | toJson }}
timeout = {{ .timeout | toJson }}
on_error = {{ .onError | toJson }}
{{- end }}
{{- end }}

[admin]
listen = {{ printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port) | toJson }}

[redis]
prefix = {{ .Values.redis.prefix | toJson }}

[history]
size = {{ int .Values.history.size }}
ttl = {{ .Values.history.ttl | toJson }}

[presence]
ttl = {{ .Values.presence.ttl | toJson }}
refresh = {{ .Values.presence.refresh | toJson }}
members_in_join = {{ int .Values.presence.membersInJoin }}
notify_max_members = {{ int .Values.presence.notifyMaxMembers }}
summary_interval = {{ .Values.presence.summaryInterval | toJson }}

[limits]
max_text_bytes = {{ int .Values.limits.maxTextBytes }}
max_frame_bytes = {{ int .Values.limits.maxFrameBytes }}
max_rooms_per_connection = {{ int .Values.limits.maxRoomsPerConnection }}
max_connections = {{ int .Values.limits.maxConnections }}
messages_per_second = {{ int .Values.limits.messagesPerSecond }}
burst = {{ int .Values.limits.burst }}
rate_limit_strikes = {{ int .Values.limits.rateLimitStrikes }}
outbound_queue = {{ int .Values.limits.outboundQueue }}
connections_per_ip = {{ int .Values.limits.connectionsPerIp }}
connects_per_second_per_ip = {{ int .Values.limits.connectsPerSecondPerIp }}

[heartbeat]
interval = {{ .Values.heartbeat.interval | toJson }}
timeout = {{ .Values.heartbeat.timeout | toJson }}

[drain]
propagation_delay = {{ .Values.drain.propagationDelay | toJson }}
spread = {{ .Values.drain.spread | toJson }}
timeout = {{ .Values.drain.timeout | toJson }}

[log]
format = {{ .Values.log.format | toJson }}
level = {{ .Values.log.level | toJson }}

[otel]
{{- if .Values.otel.endpoint }}
endpoint = {{ .Values.otel.endpoint | toJson }}
{{- end }}
service_name = {{ .Values.otel.serviceName | toJson }}

[metrics]
room_label_cap = {{ int .Values.metrics.roomLabelCap }}
{{- end -}}
