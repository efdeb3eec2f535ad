using System.Net;
using System.Text;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Ingress;

public class OperatorApiBodyTests
{
    [Fact]
    public async Task Call_BodyOverTheLimit_Is413AndNothingIsDone()
    {
        // YARP forwarded the headers and failed only while copying the body: the Dispatcher had replayed or discarded, and
        // the client was told 413.
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 400 } } });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);
        var tooLarge = new string('a', 20 * 1024);

        foreach (var (method, path) in new[]
        {
            (HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay"),
            (HttpMethod.Post, "/api/deadletters/replay?limit=1"),
            (HttpMethod.Delete, $"/api/deadletters/{deliveryId}"),
        })
        {
            foreach (var chunked in new[] { false, true })
            {
                using var request = relay.Operator(method, path);
                request.Content = chunked
                    ? new StreamContent(new MemoryStream(Encoding.ASCII.GetBytes(tooLarge + tooLarge)))
                    : new StringContent(tooLarge);
                // Without a length the body is read (up to the limit) before it is known to be too large.
                request.Headers.TransferEncodingChunked = chunked;
                using var response = await relay.Ingress.Client.SendAsync(request);

                Assert.True(response.StatusCode == HttpStatusCode.RequestEntityTooLarge, $"{method} {path} (chunked: {chunked}): {(int)response.StatusCode}");
                Assert.Equal("body_too_large", await ProblemResponses.ReasonAsync(response));
                Assert.Equal(DeliveryStates.DeadLettered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
                Assert.Equal(1, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
            }
        }

        // A small body, as some clients always send, is ignored as before.
        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        replay.Content = new StringContent("{}", Encoding.UTF8, "application/json");
        using var replayed = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, replayed.StatusCode);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20), "the replayed run is posted");
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
    }
}
