import type { DemoState } from './demo.js'

export interface StackUrls {
  auth: string
  issuer: string
  authAdmin: string
  rotationMetrics: string
  user: string
  order: string
  product: string
  userAdmin: string
  orderAdmin: string
  productAdmin: string
  gateway: string
  gatewayAdmin: string
}

export const DEFAULT_URLS: StackUrls = {
  auth: 'http://127.0.0.1:3010',
  issuer: 'http://127.0.0.1:3010',
  authAdmin: 'http://127.0.0.1:8091',
  rotationMetrics: 'http://127.0.0.1:8092',
  user: 'http://127.0.0.1:3001',
  order: 'http://127.0.0.1:3002',
  product: 'http://127.0.0.1:3003',
  userAdmin: 'http://127.0.0.1:8093',
  orderAdmin: 'http://127.0.0.1:8094',
  productAdmin: 'http://127.0.0.1:8095',
  gateway: 'http://127.0.0.1:8080',
  gatewayAdmin: 'http://127.0.0.1:8090'
}

/**
 * The walkthrough's one helper: `json_field NAME` prints the NAME field of the JSON answer on stdin,
 * or, when the answer has none (an error answer, no answer at all), says why on stderr and fails.
 * Defined in the pasting shell, so each step below stays one readable line and never prints a stack.
 */
const JSON_FIELD_FUNCTION = `json_field () { node -e 'let a; try { a = JSON.parse(require("fs").readFileSync(0, "utf8")) } catch { a = {} }
  const v = a?.[process.argv[1]]; if (typeof v === "string") console.log(v); else { process.exitCode = 1
  console.error(\`no \${process.argv[1]}: \${a?.error ? \`\${a.error} (\${a.error_description})\` : "no JSON answer (is the stack running?)"}\`) }' "$1"; }`

/**
 * The copy-paste walkthrough (bash or zsh, needs only curl and node), printed by `portcullis start`
 * and kept in the README's quick start. Each step says what you should see. It can be pasted again
 * and again into the same shell: an error answer (a refused login, say) is one line naming the
 * error, never a stack trace, and the demo stack's login limit allows many pastes (DEMO_LOGIN_USER_MAX).
 */
export function walkthrough (u: StackUrls): string {
  const gw = u.gateway
  return `# 0. A helper: json_field NAME prints that field of the JSON answer on stdin, or why there is none
${JSON_FIELD_FUNCTION}

# 1. Log in as alice (a demo user) and keep her tokens in shell variables
LOGIN=$(curl -s ${u.auth}/auth/login -H 'content-type: application/json' \\
  -d '{"username":"alice","password":"alice-demo-pass"}')
ACCESS=$(printf '%s' "$LOGIN" | json_field access_token)
REFRESH=$(printf '%s' "$LOGIN" | json_field refresh_token)

# 2. Place an order through the gateway: 201. order-service checks alice with user-service and each
#    product with product-service, forwarding her token and the gateway's x-request-id.
curl -s ${gw}/api/orders -H "authorization: Bearer $ACCESS" \\
  -H 'content-type: application/json' -d '{"items":[{"productId":"p-1","quantity":2}]}'; echo
curl -s ${gw}/api/orders -H "authorization: Bearer $ACCESS"; echo

# 3. 401 without a token, and 401 with a tampered one (alice makes herself admin; the signature no longer matches)
curl -s -o /dev/null -w 'no token: %{http_code}\\n' ${gw}/api/orders
TAMPERED=$(printf '%s' "$ACCESS" | node -pe 'const [h, p = "", s = ""] = require("fs").readFileSync(0, "utf8").split(".");
  const c = JSON.parse(Buffer.from(p, "base64url").toString() || "{}"); c.role = "admin";
  [h, Buffer.from(JSON.stringify(c)).toString("base64url"), s].join(".")')
curl -s -o /dev/null -w 'tampered: %{http_code}\\n' ${gw}/api/orders -H "authorization: Bearer $TAMPERED"

# 4. 403: bob may read orders but not place them (he lacks the order:create permission)
BOB=$(curl -s ${u.auth}/auth/login -H 'content-type: application/json' \\
  -d '{"username":"bob","password":"bob-demo-pass"}' | json_field access_token)
curl -s -o /dev/null -w 'bob orders: %{http_code}\\n' ${gw}/api/orders -H "authorization: Bearer $BOB" \\
  -H 'content-type: application/json' -d '{"items":[{"productId":"p-1","quantity":1}]}'

# 5. 429: /api/products allows 10 requests a minute per caller; the last ones are refused
for i in $(seq 1 12); do curl -s -o /dev/null -w '%{http_code} ' ${gw}/api/products -H "authorization: Bearer $ACCESS"; done; echo

# 6. Refresh: a new token pair; the refresh token rotates on every use
PAIR=$(curl -s ${u.auth}/auth/refresh -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}")
REFRESH=$(printf '%s' "$PAIR" | json_field refresh_token)
curl -s -o /dev/null -w 'with the refreshed token: %{http_code}\\n' ${gw}/api/orders \\
  -H "authorization: Bearer $(printf '%s' "$PAIR" | json_field access_token)"

# 7. Log out: 204; after it the refresh token is refused (401), and so is the session's access
#    token at the gateway and every service (the revocation reaches them within a second)
curl -s -o /dev/null -w 'logout: %{http_code}\\n' ${u.auth}/auth/logout -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}"
curl -s -o /dev/null -w 'refresh after logout: %{http_code}\\n' ${u.auth}/auth/refresh -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}"
sleep 1; curl -s -o /dev/null -w 'access token after logout: %{http_code}\\n' ${gw}/api/orders -H "authorization: Bearer $ACCESS"

# 8. Metrics (gateway admin port) and the signing keys (the command names its store on stderr first)
curl -s ${u.gatewayAdmin}/metrics | awk '/^portcullis_(auth_requests|rate_limit_rejections)_total/ && $NF > 0'
node bin/portcullis.js keys list
`
}

export interface BannerInput {
  urls: StackUrls
  dataDir: string
  routeFile: string
  demo: DemoState | undefined
  demoCreated: boolean
}

export function banner (b: BannerInput): string {
  const u = b.urls
  const line = '='.repeat(78)
  const demo = b.demo === undefined
    ? 'Demo mode is off: add users with "node bin/portcullis.js users add" (see --help).\n'
    : `DEMO MODE${b.demoCreated ? ' (accounts created now, on the first start)' : ` (accounts from the first start, ${b.demo.createdAt})`}:
these passwords are public. Never expose this stack beyond your machine.
${b.demo.users.map((x) => `  user ${x.username.padEnd(6)} password ${x.password.padEnd(16)} role ${x.role.padEnd(5)} ${x.note}`).join('\n')}
  service client ${b.demo.client.clientId}  secret ${b.demo.client.clientSecret}
    (order-service uses it for its background calls; try it:
     curl -s ${u.auth}/oauth/token -d grant_type=client_credentials -d client_id=${b.demo.client.clientId} -d client_secret=${b.demo.client.clientSecret})
`
  return `
${line}
Portcullis is running.  Data: ${b.dataDir}  Routes: ${b.routeFile}
  gateway          ${u.gateway}   (admin: ${u.gatewayAdmin}/metrics, /health/ready)
  auth             ${u.auth}   (JWKS: ${u.auth}/.well-known/jwks.json, admin: ${u.authAdmin})
  user-service     ${u.user}
  order-service    ${u.order}
  product-service  ${u.product}
  rotation worker  metrics ${u.rotationMetrics}/metrics
${demo}${b.demo === undefined ? '' : `
Try it (copy-paste into bash or zsh, from this folder):

${walkthrough(u)}`}
Ctrl-C stops everything.
${line}
`
}
