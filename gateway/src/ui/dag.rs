//! An execution's DAG as inline SVG: steps in layers by their depth along `needs` and `next`
//! arcs (a wide layer wraps onto several rows), each node carrying `data-step` and
//! `data-status`, which the script updates from the event stream.

use std::collections::HashMap;

use maud::{html, Markup};
use noetl_contract::message::StepView;
use noetl_contract::playbook::Playbook;

const NODE_W: usize = 168;
const NODE_H: usize = 34;
const GAP_X: usize = 24;
const GAP_Y: usize = 30;
const MARGIN: usize = 12;
/// The most nodes on one row; a wider layer wraps.
const ROW: usize = 8;
const LABEL_CHARS: usize = 20;

/// The arcs between steps, by index: `needs` (from the needed step) and `next` (from the step
/// to the arc's target). Names that match no step are left out.
fn edges(steps: &[StepView], playbook: &Playbook) -> Vec<(usize, usize)> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| (step.name.as_str(), i))
        .collect();
    let mut edges = Vec::new();
    for spec in &playbook.steps {
        let Some(&to) = index.get(spec.name.as_str()) else {
            continue;
        };
        edges.extend(
            spec.needs
                .iter()
                .filter_map(|n| Some((*index.get(n.as_str())?, to))),
        );
        edges.extend(
            spec.next
                .iter()
                .flat_map(|next| &next.arcs)
                .filter_map(|arc| Some((to, *index.get(arc.step.as_str())?))),
        );
    }
    edges
}

/// Each step's depth: the longest chain of arcs leading to it (Kahn's order; a step on a cycle,
/// which a valid playbook has none of, stays at depth 0).
fn depths(count: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut incoming = vec![0usize; count];
    let mut outgoing = vec![Vec::new(); count];
    for &(from, to) in edges {
        incoming[to] += 1;
        outgoing[from].push(to);
    }
    let mut depth = vec![0usize; count];
    let mut ready: Vec<usize> = (0..count).filter(|&i| incoming[i] == 0).collect();
    while let Some(step) = ready.pop() {
        for &next in &outgoing[step] {
            depth[next] = depth[next].max(depth[step] + 1);
            incoming[next] -= 1;
            if incoming[next] == 0 {
                ready.push(next);
            }
        }
    }
    depth
}

/// The top-left corner of each node, and the drawing's width and height.
fn layout(depth: &[usize]) -> (Vec<(usize, usize)>, usize, usize) {
    let layers = depth.iter().max().map_or(0, |d| d + 1);
    let mut members = vec![Vec::new(); layers];
    for (i, &d) in depth.iter().enumerate() {
        members[d].push(i);
    }
    let mut at = vec![(0, 0); depth.len()];
    let (mut row, mut widest) = (0, 0);
    for layer in &members {
        for (k, &i) in layer.iter().enumerate() {
            let (r, c) = (row + k / ROW, k % ROW);
            at[i] = (MARGIN + c * (NODE_W + GAP_X), MARGIN + r * (NODE_H + GAP_Y));
            widest = widest.max(c + 1);
        }
        row += layer.len().div_ceil(ROW);
    }
    let width = 2 * MARGIN + widest * (NODE_W + GAP_X);
    let height = 2 * MARGIN + row * (NODE_H + GAP_Y);
    (at, width, height)
}

fn label(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

/// The DAG; without the playbook (an inline one, which the read API does not return) the
/// steps are drawn without arcs.
pub fn render(steps: &[StepView], playbook: Option<&Playbook>) -> Markup {
    let edges = playbook.map(|p| edges(steps, p)).unwrap_or_default();
    let (at, width, height) = layout(&depths(steps.len(), &edges));
    // Every SVG element is closed explicitly (`{}`): inside HTML, `<path>` or `<rect>` without
    // `/>` would swallow its next siblings as children, and they would not be drawn.
    html! {
        svg.dag role="img" aria-labelledby="dag-title" xmlns="http://www.w3.org/2000/svg"
            width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
            title #dag-title { "The steps of this execution and the arcs between them (" (steps.len()) " steps)" }
            defs {
                marker #arrow viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" markerHeight="8" orient="auto" {
                    path d="M0,0 L8,4 L0,8 z" {}
                }
            }
            g.edges {
                @for &(from, to) in &edges {
                    @let ((x1, y1), (x2, y2)) = (at[from], at[to]);
                    @let (sx, sy, tx, ty) = (x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2);
                    @let mid = (sy + ty) / 2;
                    path.edge marker-end="url(#arrow)"
                        d={ "M" (sx) "," (sy) " C" (sx) "," (mid) " " (tx) "," (mid) " " (tx) "," (ty) } {}
                }
            }
            g.nodes {
                @for (i, step) in steps.iter().enumerate() {
                    @let (x, y) = at[i];
                    g.node id={ "step-" (i) } data-step=(step.name) data-status=(step.status.as_str()) {
                        title { (step.name) }
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                        text x=(x + 10) y=(y + NODE_H / 2 + 5) { (label(&step.name)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_the_longest_chain_and_cycles_do_not_hang() {
        // 0 → 1 → 3, 0 → 2 → 3, 2 → 4
        let depth = depths(5, &[(0, 1), (1, 3), (0, 2), (2, 3), (2, 4)]);
        assert_eq!(depth, vec![0, 1, 1, 2, 2]);
        assert_eq!(depths(2, &[(0, 1), (1, 0)]), vec![0, 0]);
    }

    #[test]
    fn every_svg_element_is_closed_so_siblings_stay_siblings() {
        let steps: Vec<StepView> = ["a", "b"]
            .iter()
            .map(|name| {
                serde_json::from_value(
                    serde_json::json!({"name": name, "status": "pending", "attempt": 0}),
                )
                .expect("a step view")
            })
            .collect();
        let playbook: Playbook = serde_json::from_value(serde_json::json!({"name": "p", "steps": [
            {"name": "a", "action": "noop"}, {"name": "b", "action": "noop", "needs": ["a"]}]}))
        .expect("a playbook");
        let svg = render(&steps, Some(&playbook)).into_string();
        assert_eq!(svg.matches("</rect><text").count(), 2, "{svg}");
        assert_eq!(
            svg.matches("</path>").count(),
            2,
            "the arrow and one arc: {svg}"
        );
    }

    #[test]
    fn wide_layers_wrap_and_long_names_are_cut() {
        let (at, width, _) = layout(&[0; ROW + 1]);
        assert_eq!(at[ROW].0, MARGIN, "the ninth node starts a new row");
        assert!(at[ROW].1 > at[0].1);
        assert_eq!(width, 2 * MARGIN + ROW * (NODE_W + GAP_X));
        assert_eq!(label("short"), "short");
        assert_eq!(label(&"x".repeat(40)).chars().count(), LABEL_CHARS);
    }
}
