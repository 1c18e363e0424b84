// The Borough console: the cluster as this node sees it (refreshed every second from
// GET /cluster), and a live map editor on the browser client.
import { openMap } from "/maps/client.js";

const $ = (selector) => document.querySelector(selector);
const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
};

// ---- the cluster ----

let selfId = null;

function renderCluster(cluster) {
  selfId = cluster.node;
  $("#cluster-name").textContent = cluster.cluster_name || "no cluster";
  $("#node-label").textContent = `node ${cluster.node} \u00b7 ${cluster.membership}`;
  $("#health-dot").className = "dot " + (cluster.membership === "member" ? "good" : "bad");
  const members = cluster.members || [];
  $("#cluster-summary").textContent =
    `${members.length} member${members.length === 1 ? "" : "s"} \u00b7 ${cluster.replicas_per_partition ?? "?"} replica${cluster.replicas_per_partition === 1 ? "" : "s"} per partition` +
    (cluster.moving_count ? ` \u00b7 ${cluster.moving_count} moving` : "");
  const zones = new Map();
  for (const member of members) {
    const zone = `${member.region} / ${member.zone}`;
    if (!zones.has(zone)) zones.set(zone, []);
    zones.get(zone).push(member);
  }
  const container = $("#zones");
  container.replaceChildren(
    ...[...zones.keys()].sort().map((zone) =>
      element("div", { class: "zone" },
        element("div", { class: "zone-name" }, zone),
        ...zones.get(zone).map((member) =>
          element("div", { class: "member" + (member.id === selfId ? " self" : ""), "data-member": member.id },
            element("div", {},
              element("span", { class: "id" }, `node ${member.id}`),
              element("span", { class: `badge ${member.state}` }, member.state),
              member.id === cluster.directory_leader ? element("span", { class: "badge" }, "directory leader") : ""),
            element("div", { class: "addr" }, member.http_address),
            element("div", { class: "stats" }, `${member.replicas} replica${member.replicas === 1 ? "" : "s"} \u00b7 leads ${member.leads}`))))));
  $("#partition-count").textContent = `(${cluster.partition_count})`;
  const body = $("#partitions tbody");
  body.replaceChildren(
    ...(cluster.partitions || []).map((partition) =>
      element("tr", { "data-partition": partition.name ?? partition.name_base64 },
        element("td", {}, partition.name ?? `base64:${partition.name_base64}`),
        element("td", {}, ...partition.replicas.map((id, index) =>
          element("span", { class: id === partition.leader ? "leader" : "" }, (index ? ", " : "") + id))),
        element("td", { class: "leader" }, partition.leader ?? "\u2014"),
        element("td", {}, partition.generation))));
}

// The page's own node, then (when it is gone) the node the open map follows.
async function refreshCluster() {
  const sources = [""];
  if (map && map.node && map.node !== location.origin) sources.push(map.node);
  let failure = null;
  for (const source of sources) {
    try {
      const response = await fetch(`${source}/cluster`);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      renderCluster(await response.json());
      if (source) $("#node-label").textContent += ` (this page's node is unreachable; via ${source})`;
      return;
    } catch (error) {
      failure = failure || error;
    }
  }
  $("#health-dot").className = "dot bad";
  $("#node-label").textContent = `unreachable (${failure.message})`;
}

refreshCluster();
setInterval(refreshCluster, 1000);

// ---- the map editor ----

let map = null;

function log(kind, text) {
  const list = $("#log");
  list.prepend(element("li", { class: `kind-${kind}` }, text));
  while (list.children.length > 200) list.lastChild.remove();
}

function renderEntries(changedKey) {
  const body = $("#entries tbody");
  body.replaceChildren(
    ...map.entries().map(([key, value]) => {
      const remove = element("button", { class: "small", "data-delete": key }, "delete");
      remove.addEventListener("click", () => map.delete(key).catch((error) => showError(error)));
      return element("tr", { class: key === changedKey ? "flash" : "", "data-key": key },
        element("td", {}, key),
        element("td", { class: "value" }, JSON.stringify(value)),
        element("td", {}, remove));
    }));
  $("#entries").classList.toggle("hidden", false);
}

function renderStatus() {
  const status = $("#map-status");
  const live = map.connected && map.live;
  status.replaceChildren(
    element("span", { class: live ? "live" : "down" }, live ? "\u25cf live" : "\u25cb reconnecting"),
    ` \u00b7 ${map.name} \u00b7 revision ${map.revision ?? "\u2014"} \u00b7 ${map.size} key${map.size === 1 ? "" : "s"} \u00b7 via ${map.node ?? "\u2014"}`);
}

let errorTimer = null;
function showError(error) {
  const box = $("#set-error");
  box.textContent = error.message;
  box.classList.remove("hidden");
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => box.classList.add("hidden"), 5000);
}

function openEditor(name) {
  if (map) map.close();
  $("#log").replaceChildren();
  map = openMap(name);
  window.boroughMap = map;
  history.replaceState(null, "", `#map=${encodeURIComponent(name)}`);
  $("#set-form").classList.remove("hidden");
  $("#log-title").classList.remove("hidden");
  map.on("ready", () => { renderEntries(); renderStatus(); log("info", `ready at revision ${map.revision}`); });
  map.on("set", (value, key) => { renderEntries(key); renderStatus(); log("set", `r${map.revision} set ${key} = ${JSON.stringify(value)}`); });
  map.on("delete", (oldValue, key) => { renderEntries(); renderStatus(); log("delete", `r${map.revision} delete ${key} (was ${JSON.stringify(oldValue)})`); });
  map.on("status", () => renderStatus());
  renderStatus();
}

$("#open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("#map-name").value.trim();
  if (name) openEditor(name);
});

$("#set-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#key-input").value;
  const text = $("#value-input").value;
  let value;
  try {
    value = JSON.parse(text);
  } catch (_) {
    value = text; // plain text is stored as a JSON string
  }
  try {
    await map.set(key, value);
    $("#value-input").value = "";
  } catch (error) {
    showError(error);
  }
});

const fromHash = new URLSearchParams(location.hash.slice(1)).get("map");
if (fromHash) {
  $("#map-name").value = fromHash;
  openEditor(fromHash);
}
