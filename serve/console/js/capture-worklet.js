// The microphone's samples, posted to the page in blocks (AudioWorklet: runs off the main thread).
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("chorus-capture", Capture);
