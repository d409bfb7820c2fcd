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
{{- required "redis.external.url is required when redis.enabled is false" .Values.redis.external.url -}}
{{- end -}}
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
# redis.url, redis.password and node.id come from the environment (ROOMCAST_REDIS__URL,
# ROOMCAST_REDIS__PASSWORD from the Secret, ROOMCAST_NODE__ID = the pod name).

[server]
listen = {{ printf "%s:%d" .Values.server.bindAddress (int .Values.server.port) | toJson }}
allowed_origins = {{ .Values.allowedOrigins | default list | toJson }}
trusted_proxies = {{ include "roomcast.trustedProxies" . }}
header_timeout = {{ .Values.headerTimeout | toJson }}

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
