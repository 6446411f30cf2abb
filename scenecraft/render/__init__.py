"""The renderer: a RenderPlan to images, storyboards and provenance."""
