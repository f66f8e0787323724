"""Write README.md from nbs/index.ipynb, the course's landing page.

nbdev's own `nbdev_readme` renders the notebook with quarto; this does the same job without quarto (which cannot be
installed everywhere), so the README and the docs landing page never drift apart:

    python tools/make_readme.py           # rewrite README.md
    python tools/make_readme.py --check   # exit 1 if README.md differs from what index.ipynb gives (CI runs this)

Markdown cells are copied; code cells are shown as Python blocks with their text outputs; cells marked `#| hide`
are left out, as in the docs. Images in the README must be files (e.g. `nbs/images/...`), not cell outputs.
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
src, dst = root/'nbs'/'index.ipynb', root/'README.md'

def _directives(code):
    return [l[3:].strip() for l in code.splitlines() if l.startswith('#|')]

def render(nb):
    parts = []
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            # links relative to nbs/ (images, other notebooks) must point into nbs/ from the repo root
            parts.append(re.sub(r'\]\((images/|\w+\.ipynb)', r'](nbs/\1', s))
            continue
        ds = _directives(s)
        if any(d.startswith(('hide', 'include: false', 'echo: false')) for d in ds): continue
        code = '\n'.join(l for l in s.splitlines() if not l.startswith('#|')).strip()
        if code: parts.append(f"```python\n{code}\n```")
        for o in c.get('outputs', []):
            txt = o.get('text') or o.get('data', {}).get('text/plain')
            if txt: parts.append("```\n" + ''.join(txt).rstrip() + "\n```")
    return ('<!-- Generated from nbs/index.ipynb by `python tools/make_readme.py`: edit the notebook, not this file. -->\n\n'
            + '\n\n'.join(parts).strip() + '\n')

if __name__ == '__main__':
    text = render(json.loads(src.read_text()))
    if '--check' in sys.argv:
        if not dst.exists() or dst.read_text() != text:
            print('README.md differs from nbs/index.ipynb: run `python tools/make_readme.py` and commit README.md')
            sys.exit(1)
        print('README.md matches nbs/index.ipynb')
    else:
        dst.write_text(text); print(f'wrote {dst.relative_to(root)}')
